"""The chart with the gateway on a private node, and a scheduler behind it: for tests/integration/
test_gateway.py and bench/gateway_overhead.py.

`gateway_release` installs the chart (release "warmbuild", namespace wb-gw, pool "gw") with
`gateway.enabled` on a node of its own (tls_node.py: this checkout's node emulator, which runs the
gateway pod as Debian's haproxy plus `warmbuild gateway-sync` on the pod's loopback address, and
real buildkitd with the builders' own certificates), then runs `warmbuild scheduler` on the host
as the chart's scheduler identity, with the chart's grant CA, behind the gateway (which passes its
TLS through). It yields a `GatewaySetup`: what a runner outside the cluster is given (the
gateway's URL, the scheduler's CA, a token) and what tests look at (the gateway's log, the grant CA).
The scheduler also starts ephemeral builders (on the private node) for untrusted callers: tokens of
the testbed's OIDC issuer whose verified claims are a fork pull request of `OIDC_REPOSITORIES`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from kubernetes.client.rest import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from helm_render import CHART, helm  # noqa: E402
from poolkit import wait_for  # noqa: E402
from scheduler_harness import free_port  # noqa: E402
from tls_node import node_selector, private_node, toleration  # noqa: E402

from warmbuild.kube.client import connect  # noqa: E402

NAMESPACE = "wb-gw"  # short: the gateway pod's unix socket paths must fit 108 bytes
RELEASE = "warmbuild"
POOL = "gw"
REPLICAS = 2
BUILDERS = [f"{RELEASE}-builder-{i}" for i in range(REPLICAS)]
NODE = "warmbuild-node-gw"
FIRST_IP = "127.0.3.10"
DOMAIN = "builders.warmbuild.internal"
AUDIENCE = "warmbuild-scheduler"
OIDC_REPOSITORIES = "octo-org/*"  # verified CI identities granted the pool (trust from their claims)


def namespace_gone(core) -> bool:
    try:
        core.read_namespace(NAMESPACE)
        return False
    except ApiException as error:
        if error.status == 404:
            return True
        raise


def remove_release(core) -> None:
    if helm("status", RELEASE, "--namespace", NAMESPACE).returncode == 0:
        helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "120s", timeout=180)
    try:
        core.delete_namespace(NAMESPACE)
    except ApiException as error:
        if error.status != 404:
            raise
    wait_for(lambda: namespace_gone(core), 120, f"namespace {NAMESPACE} to be deleted")


def secret_files(core, name: str, directory: Path) -> dict[str, Path]:
    secret = core.read_namespaced_secret(name, NAMESPACE)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, value in secret.data.items():
        path = directory / key
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o600)
        files[key] = path
    return files


def scheduler_tls_for(ip: str, directory: Path) -> tuple[Path, Path, Path]:
    """The scheduler's certificate for the gateway's public address (the runner's URL names it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test scheduler CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warmbuild-scheduler")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def token_for(core, account: str, audiences: list[str] | None = None) -> str:
    spec: dict = {"expirationSeconds": 3600}
    if audiences:
        spec["audiences"] = audiences
    answer = core.create_namespaced_service_account_token(
        account, NAMESPACE, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    )
    return answer.status.token


@dataclass
class GatewaySetup:
    directory: Path
    gateway_ip: str
    gateway_log: Path  # HAProxy's connection log (the emulated pod's log)
    url: str  # https://GATEWAY:8443: the scheduler, through the gateway
    scheduler_ca: Path
    token: str  # the chart's CI ServiceAccount, for the scheduler's audience
    grant_ca: dict[str, Path] = field(default_factory=dict)  # tls.crt, tls.key, gateway-ca.crt (the pool CA)
    state_dir: Path | None = None


@contextmanager
def gateway_release(core, directory: Path):
    state = Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "ngw"
    scheduler_port = free_port()
    placement = [
        "--set-json",
        f"builder.nodeSelector={json.dumps(node_selector(NODE))}",
        "--set-json",
        f"builder.tolerations={json.dumps([toleration(NODE)])}",
        "--set-json",
        f"gateway.nodeSelector={json.dumps(node_selector(NODE))}",
        "--set-json",
        f"gateway.tolerations={json.dumps([toleration(NODE)])}",
    ]
    with private_node(core, NODE, FIRST_IP, state):
        remove_release(core)
        try:
            done = helm(
                "install",
                RELEASE,
                str(CHART),
                "--namespace",
                NAMESPACE,
                "--create-namespace",
                "--wait",
                "--timeout",
                "180s",
                "--set",
                f"pool={POOL}",
                "--set",
                f"builder.replicas={REPLICAS}",
                "--set",
                "persistence.enabled=false",
                "--set",
                "drain.enabled=false",
                "--set",
                "scheduler.enabled=true",
                "--set",
                "scheduler.replicas=0",  # the scheduler runs on the host, as the chart's scheduler identity
                "--set",
                "gateway.enabled=true",
                "--set",
                "gateway.replicas=1",
                "--set",
                f"gateway.schedulerAddress=127.0.0.1:{scheduler_port}",
                "--set-json",
                f"gateway.sync.command={json.dumps([sys.executable, '-m', 'warmbuild.cli'])}",
                *placement,
                timeout=240,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            pods = core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/component=gateway").items
            (pod,) = pods
            gateway_ip = pod.status.pod_ip
            gateway_log = state / "pods" / f"{NAMESPACE}_{pod.metadata.name}" / "buildkitd.log"
            scheduler_ca, cert, key = scheduler_tls_for(gateway_ip, directory / "scheduler-tls")
            grant = secret_files(core, f"{RELEASE}-scheduler-grant-ca", directory / "grant")
            auth = directory / "auth.yaml"
            auth.write_text(
                "grants:\n"
                f"  - {{pools: [{POOL}], users: ['system:serviceaccount:{NAMESPACE}:{RELEASE}-ci']}}\n"
                f"  - {{pools: [{POOL}], repositories: ['{OIDC_REPOSITORIES}']}}\n"
                f"audiences: [{AUDIENCE}]\n"
            )
            ephemeral = directory / "ephemeral.yaml"  # untrusted callers' builders, on the private node
            ephemeral.write_text(
                json.dumps(
                    {
                        "nodeSelector": node_selector(NODE),
                        "tolerations": [toleration(NODE)],
                        "startupTimeoutSeconds": 120,
                    }
                )
            )
            env = {
                **os.environ,
                "KUBECONFIG": "",
                "WARMBUILD_K8S_SERVER": connect(os.environ["KUBECONFIG"]).host,
                "WARMBUILD_K8S_TOKEN": token_for(core, f"{RELEASE}-scheduler"),
                "WARMBUILD_K8S_CA_FILE": str(Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "pki" / "ca.crt"),
            }
            log = open(directory / "scheduler.log", "w")
            scheduler = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "warmbuild.cli",
                    "scheduler",
                    f"--listen=127.0.0.1:{scheduler_port}",
                    f"--tls-cert={cert}",
                    f"--tls-key={key}",
                    f"--namespace={NAMESPACE}",
                    f"--auth-config={auth}",
                    f"--gateway-address={gateway_ip}:8443",
                    f"--gateway-ca={grant['gateway-ca.crt']}",
                    f"--grant-ca-cert={grant['tls.crt']}",
                    f"--grant-ca-key={grant['tls.key']}",
                    f"--ephemeral-config={ephemeral}",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            url = f"https://{gateway_ip}:8443"
            try:

                def ready() -> bool:
                    assert scheduler.poll() is None, (directory / "scheduler.log").read_text()
                    try:
                        return requests.get(f"{url}/readyz", verify=str(scheduler_ca), timeout=2).status_code == 200
                    except requests.RequestException:
                        return False

                wait_for(ready, 30, "the scheduler to answer through the gateway")
                token = token_for(core, f"{RELEASE}-ci", [AUDIENCE])
                yield GatewaySetup(directory, gateway_ip, gateway_log, url, scheduler_ca, token, grant, state)
            finally:
                scheduler.send_signal(signal.SIGTERM)
                try:
                    scheduler.wait(15)
                except subprocess.TimeoutExpired:
                    scheduler.kill()
                    scheduler.wait()
                log.close()
        finally:
            remove_release(core)  # while the emulator runs, so that it finalizes the pods
