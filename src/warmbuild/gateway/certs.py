"""Grant certificates: the runner's key and CSR, and the scheduler's signature for one builder.

A runner outside the cluster reaches a builder only through the gateway, with a client certificate
that names that builder alone and lives no longer than the slot's lease plus `MARGIN_SECONDS`. The
runner makes the key and a CSR in the job's private directory (the key never leaves the runner);
the scheduler, having granted builder B, signs the CSR with the grant CA: CN = B, client
authentication only, no other name. The grant CA's key is in the scheduler's Secret and nowhere
else; builders never trust it (they accept the gateway's identity and in-cluster CI identities,
signed by the pool's CA), so a grant certificate presented to a builder directly is refused. Each
renewal of the slot signs a fresh certificate for the same key, so a build that opens a new
connection late (a push retried) still has a valid one.

Decision: the `cryptography` package, imported only here (as `pool/run_certs`); EC P-256 keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

MARGIN_SECONDS = 30  # a certificate outlives its lease by at most this: one renewal's delay
CLOCK_SKEW = timedelta(seconds=60)  # valid from a little before now: the gateway's clock may be behind
CSR_MAX_BYTES = 8192


class BadCsr(ValueError):
    """The CSR cannot be signed: not PEM, bad signature, or a key type the gateway does not take."""


@dataclass(frozen=True)
class ClientKey:
    """The runner's key (a file only the job's user reads) and its CSR (sent to the scheduler)."""

    key_path: Path
    csr_pem: str


def make_client_key(directory: Path) -> ClientKey:
    """A fresh EC P-256 key written 0600 in `directory` (private to the job), and a CSR for it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "grant.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warmbuild-runner")]))
        .sign(key, hashes.SHA256())
    )
    return ClientKey(key_path=path, csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode())


@dataclass(frozen=True)
class GrantCertificate:
    cert_pem: str
    not_after: datetime


class GrantSigner:
    """The grant CA: signs a runner's CSR for one builder. Holds the CA key in memory only."""

    def __init__(self, ca_cert_pem: bytes, ca_key_pem: bytes):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        self._ca = x509.load_pem_x509_certificate(ca_cert_pem)
        self._key = serialization.load_pem_private_key(ca_key_pem, password=None)
        self._key_pem = ca_key_pem
        self.ca_cert_pem = ca_cert_pem

    @classmethod
    def from_files(cls, cert_path: str, key_path: str) -> GrantSigner:
        return cls(Path(cert_path).read_bytes(), Path(key_path).read_bytes())

    def __repr__(self) -> str:  # never print a key
        return "GrantSigner()"

    def sign(self, csr_pem: str, builder: str, valid_seconds: int, now: datetime | None = None) -> GrantCertificate:
        """A client certificate for the CSR's key, naming `builder` alone, valid `valid_seconds` from now."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        if len(csr_pem) > CSR_MAX_BYTES:
            raise BadCsr(f"the CSR is longer than {CSR_MAX_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise BadCsr(f"the CSR is not a PEM certificate request ({exc})") from None
        if not csr.is_signature_valid:
            raise BadCsr("the CSR's signature does not match its key")
        public_key = csr.public_key()
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
            raise BadCsr("an RSA key in the CSR must have at least 2048 bits")
        if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise BadCsr("the CSR's key must be EC or RSA")
        now = now or datetime.now(timezone.utc)
        not_after = now + timedelta(seconds=valid_seconds)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, builder)]))
            .issuer_name(self._ca.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )  # digitalSignature
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return GrantCertificate(certificate.public_bytes(serialization.Encoding.PEM).decode(), not_after)


def certificate_name(cert_pem: bytes) -> str:
    """The CN of a certificate (for tests and messages)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    certificate = x509.load_pem_x509_certificate(cert_pem)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
