"""The scheduler's side of the gateway: a grant certificate for the granted builder.

When the scheduler runs with a grant CA (`--grant-ca-cert/--grant-ca-key`, from its Secret) and the
gateway's public address, an acquire or renew that carries a CSR is answered with a client
certificate for the granted builder only (`gateway.certs.GrantSigner`: CN = the builder's pod name),
valid for the lease's duration plus `certs.MARGIN_SECONDS`, together with what the runner needs to
use it: the gateway's address, the name to ask it for (`<builder>.<domain>`) and the CA that signed
the gateway's own certificate. The builder comes from the grant (acquire) or the held Lease's
builder label (renew), never from the caller. A CSR that cannot be signed is refused (400) before
any slot is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..gateway.certs import MARGIN_SECONDS, BadCsr, GrantSigner
from ..gateway.names import check_domain, gateway_server_name
from ..pool.run_certs import GatewayTrust


@dataclass(frozen=True)
class GatewayOptions:
    """Flags of `warmbuild scheduler` for the gateway; all empty: no gateway, CSRs are refused."""

    address: str = ""  # HOST:PORT the runners connect to (the gateway's public endpoint)
    ca_file: str = ""  # the CA that verifies the gateway's certificate (sent to runners)
    grant_ca_cert: str = ""
    grant_ca_key: str = ""
    domain: str = ""


class GatewayIssuer:
    """Signs grant certificates and describes the gateway to the runner."""

    def __init__(self, signer: GrantSigner, address: str, ca_pem: str, domain: str):
        self.signer = signer
        self.address = address
        self.ca_pem = ca_pem
        self.domain = domain

    @classmethod
    def from_options(cls, options: GatewayOptions) -> GatewayIssuer | None:
        given = [options.address, options.ca_file, options.grant_ca_cert, options.grant_ca_key]
        if not any(given):
            return None
        if not all(given):
            raise InputError(
                "the gateway needs all of --gateway-address, --gateway-ca, --grant-ca-cert and --grant-ca-key"
            )
        host, sep, port = options.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InputError(f"--gateway-address {options.address!r} must be HOST:PORT")
        try:
            domain = check_domain(options.domain or "builders.warmbuild.internal")
            signer = GrantSigner.from_files(options.grant_ca_cert, options.grant_ca_key)
            ca_pem = Path(options.ca_file).read_text()
        except OSError as exc:
            raise InputError(f"cannot read a gateway file: {exc.strerror or exc}: {exc.filename}") from None
        except ValueError as exc:
            raise InputError(f"the gateway's settings: {exc}") from None
        return cls(signer, options.address, ca_pem, domain)

    def run_trust(self) -> GatewayTrust:
        """For an ephemeral builder the scheduler starts for a runner behind the gateway: its run
        certificates (`pool.run_certs.make_run_certificates(..., gateway=...)`) make it accept the
        gateway (the pool CA) and be verifiable by it (its server certificate signed by the grant CA)."""
        return GatewayTrust(self.ca_pem.encode(), self.signer.ca_cert_pem, self.signer._key_pem)

    def check(self, csr_pem: str) -> None:
        """BadCsr unless `csr_pem` can be signed (before a slot is taken for it)."""
        self.signer.sign(csr_pem, "check", 1)

    def issue(self, csr_pem: str, builder: str, lease_seconds: int) -> dict:
        """The answer's `gateway` object: certificate, CA, address, server name."""
        try:
            server_name = gateway_server_name(builder, self.domain)
        except ValueError as exc:
            raise BadCsr(str(exc)) from None
        signed = self.signer.sign(csr_pem, builder, lease_seconds + MARGIN_SECONDS)
        return {
            "address": self.address,
            "server_name": server_name,
            "ca": self.ca_pem,
            "certificate": signed.cert_pem,
            "not_after": signed.not_after.isoformat(),
        }
