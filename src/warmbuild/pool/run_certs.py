"""Certificates for one ephemeral builder, made by the CI step for its run (pure apart from randomness).

An ephemeral builder serves mTLS like a warm one, with an identity that exists for one build only:
a fresh CA signs a server certificate for the pod's name and a client certificate for this CI step,
then its key is dropped (it lives in memory for the call only, and nothing else can ever be signed
by it). The builder gets the server pair and the CA (to verify the client) through a Secret created
for the run; the CI step keeps the client pair and the CA (to verify the server and its name) in a
private temporary directory for buildctl. Nobody else holds a certificate that either side accepts.

An ephemeral builder reached through the gateway (one the scheduler starts for a runner outside
the cluster: `GatewayTrust`) must also accept the gateway, and the gateway must be able to verify
it: its CA bundle adds the pool CA (which signed the gateway's client certificate), and its server
certificate is signed by the grant CA (in the gateway's upstream bundle) instead of the run's CA.

Decision: the `cryptography` package, imported only when an ephemeral builder starts. The standard
library cannot make certificates, and the `openssl` command is not in the CI step image (nor
reliably on Jenkins or GitLab hosts); `cryptography` ships wheels for every platform warmbuild runs
on. EC P-256 keys: fast to make (the CI step waits for them) and accepted by Go's TLS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

CLOCK_SKEW = timedelta(minutes=10)  # the node's clock may be behind the runner's


@dataclass(frozen=True)
class RunTls:
    """The CI step's side: verifies the builder (`ca_pem`, `server_name`) and proves itself."""

    server_name: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # never print a key
        return f"RunTls(server_name={self.server_name!r})"


@dataclass(frozen=True)
class GatewayTrust:
    """What an ephemeral builder behind the gateway needs besides its run's own CA (public parts,
    and the grant CA's key, which only the scheduler holds)."""

    client_ca_pem: bytes  # the pool CA: the builder accepts the gateway's client certificate
    server_ca_cert_pem: bytes  # the grant CA: signs the builder's server certificate
    server_ca_key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class RunCertificates:
    """Everything made for one run: the builder's pair, the client's pair, the CA that signed both."""

    server_name: str
    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    client: RunTls

    def __repr__(self) -> str:
        return f"RunCertificates(server_name={self.server_name!r})"


def make_run_certificates(
    server_name: str, valid_seconds: int, now: datetime | None = None, gateway: GatewayTrust | None = None
) -> RunCertificates:
    """A per-run CA (its key discarded on return), a server certificate for `server_name` only and
    a client certificate, valid from a little before `now` for `valid_seconds`. With `gateway`, the
    server certificate is signed by its server CA and the builder also accepts its client CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or datetime.now(timezone.utc)
    not_before, not_after = now - CLOCK_SKEW, now + timedelta(seconds=valid_seconds)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"warmbuild run CA for {server_name}"[:64])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage, sans: list[str], signer=None) -> tuple[bytes, bytes]:
        issuer_name, issuer_key = signer or (ca_name, ca_key)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name[:64]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )  # digitalSignature
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False
            )
        certificate = builder.sign(issuer_key, hashes.SHA256())
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem(key)

    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    server_signer, server_ca_pem, builder_trusts = None, ca_pem, ca_pem
    if gateway is not None:
        server_ca = x509.load_pem_x509_certificate(gateway.server_ca_cert_pem)
        server_signer = (server_ca.subject, serialization.load_pem_private_key(gateway.server_ca_key_pem, None))
        server_ca_pem, builder_trusts = gateway.server_ca_cert_pem, ca_pem + gateway.client_ca_pem
    server_cert, server_key = leaf(server_name, ExtendedKeyUsageOID.SERVER_AUTH, [server_name], server_signer)
    client_cert, client_key = leaf("warmbuild-ci-run", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return RunCertificates(
        server_name=server_name,
        ca_pem=builder_trusts,
        server_cert_pem=server_cert,
        server_key_pem=server_key,
        client=RunTls(server_name=server_name, ca_pem=server_ca_pem, cert_pem=client_cert, key_pem=client_key),
    )
