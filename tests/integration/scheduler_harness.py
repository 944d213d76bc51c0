"""Real `warmbuild scheduler` processes on loopback for tests and bench/scheduler_throughput.py.

The scheduler gets its own least-privilege identity on the testbed's control plane, made here with
the admin kubeconfig: a ServiceAccount with a Role for the pool's pods and Leases, and a ClusterRole
to create TokenReviews. TLS is a throwaway CA and server certificate for 127.0.0.1.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
SCHEDULER_SA = "warmbuild-scheduler"
TOKENREVIEW_ROLE = "warmbuild-scheduler-tokenreview"
CI_SA = "warmbuild-ci"
CI_USER = f"system:serviceaccount:{NAMESPACE}:{CI_SA}"
AUDIENCE = "warmbuild-scheduler"  # the scheduler's default audience


def apply(admin, path: str, body: dict) -> None:
    admin.request(
        "PATCH",
        f"{path}?fieldManager=warmbuild-tests&force=true",
        body=body,
        content_type="application/apply-patch+yaml",
    )


def ensure_service_account(admin, name: str) -> None:
    apply(
        admin,
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{name}",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}},
    )


def token_for(admin, service_account: str, seconds: int = 3600, audiences: tuple[str, ...] = ()) -> str:
    """A TokenRequest token; with `audiences` minted for them (as a projected token volume would be),
    without for the API server's own audience."""
    spec: dict = {"expirationSeconds": seconds}
    if audiences:
        spec["audiences"] = list(audiences)
    response = admin.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{service_account}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return response.body["status"]["token"]


def scheduler_token_for(admin, service_account: str, seconds: int = 3600) -> str:
    """A token of `service_account` for the scheduler's audience: what a CI pod's projected token is."""
    return token_for(admin, service_account, seconds, audiences=(AUDIENCE,))


_CI_SCHEDULER_TOKEN: list[str] = []


def ci_scheduler_token() -> str:
    """The testbed CI service account's token for the scheduler's audience (minted once per session)."""
    if not _CI_SCHEDULER_TOKEN:
        from warmbuild.kube.client import connect

        _CI_SCHEDULER_TOKEN.append(scheduler_token_for(connect(os.environ["KUBECONFIG"]), CI_SA))
    return _CI_SCHEDULER_TOKEN[0]


EPHEMERAL_RULES = [  # the chart's warmbuild.ephemeralRules, for a scheduler that starts ephemeral builders
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list"]},
]


def ensure_scheduler_identity(admin, ephemeral_builders: bool = False) -> str:
    """The scheduler's ServiceAccount and RBAC (with `ephemeral_builders`, the chart's rules for
    starting them, under the same admission policies); returns a fresh token for it."""
    ensure_service_account(admin, SCHEDULER_SA)
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    apply(
        admin,
        f"{rbac}/namespaces/{NAMESPACE}/roles/{SCHEDULER_SA}",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": SCHEDULER_SA, "namespace": NAMESPACE},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch"],
                },
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["get", "list", "watch"]},
                *(EPHEMERAL_RULES if ephemeral_builders else []),
            ],
        },
    )
    apply(
        admin,
        f"{rbac}/namespaces/{NAMESPACE}/rolebindings/{SCHEDULER_SA}",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": SCHEDULER_SA, "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SCHEDULER_SA},
            "subjects": [{"kind": "ServiceAccount", "name": SCHEDULER_SA, "namespace": NAMESPACE}],
        },
    )
    apply(
        admin,
        f"{rbac}/clusterroles/{TOKENREVIEW_ROLE}",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": TOKENREVIEW_ROLE},
            "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}],
        },
    )
    apply(
        admin,
        f"{rbac}/clusterrolebindings/{TOKENREVIEW_ROLE}",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": TOKENREVIEW_ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": TOKENREVIEW_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": SCHEDULER_SA, "namespace": NAMESPACE}],
        },
    )
    return token_for(admin, SCHEDULER_SA)


def ci_token() -> str:
    """The testbed CI service account's token, from its kubeconfig."""
    config = yaml.safe_load(Path(os.environ["WARMBUILD_CI_KUBECONFIG"]).read_text())
    return config["users"][0]["user"]["token"]


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """(CA cert, server cert, server key) for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warmbuild test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warmbuild-scheduler")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class SchedulerSetup:
    """What a scheduler process needs: its token, TLS files, an auth config."""

    directory: Path
    token: str
    ca: Path
    cert: Path
    key: Path
    auth_config: Path


def prepare(admin, directory: Path, grants: list[dict], ephemeral_builders: bool = False, **config) -> SchedulerSetup:
    """TLS files, the scheduler's identity, and an auth config of `grants` (and e.g. limits=...)."""
    ca, cert, key = make_tls(directory / "tls")
    auth_config = directory / "auth.yaml"
    auth_config.write_text(yaml.safe_dump({"grants": grants, **config}))
    token = ensure_scheduler_identity(admin, ephemeral_builders)
    return SchedulerSetup(directory, token, ca, cert, key, auth_config)


class SchedulerProcess:
    """One `warmbuild scheduler` replica on 127.0.0.1; stopped by its PID."""

    def __init__(self, admin, setup: SchedulerSetup, name: str, max_poll_seconds: float = 30.0, extra_args: tuple = ()):
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.setup = setup
        self.log_path = setup.directory / f"{name}.log"
        env = {
            **os.environ,
            "KUBECONFIG": "",
            "WARMBUILD_K8S_SERVER": admin.host,
            "WARMBUILD_K8S_TOKEN": setup.token,
            "WARMBUILD_K8S_CA_FILE": str(Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "pki" / "ca.crt"),
        }
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warmbuild.cli",
                "scheduler",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--tls-cert",
                str(setup.cert),
                "--tls-key",
                str(setup.key),
                "--namespace",
                NAMESPACE,
                "--auth-config",
                str(setup.auth_config),
                "--max-poll-seconds",
                str(max_poll_seconds),
                *extra_args,
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"scheduler exited {self.process.returncode}: {self.log()}")
            try:
                if requests.get(f"{self.url}/readyz", verify=str(self.setup.ca), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"scheduler at {self.url} not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL, by PID: a crashed replica."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
