"""Build from anywhere: a runner with only the scheduler's URL and a token builds through the gateway.

The chart is installed with the gateway (release "warmbuild", namespace wb-gw, pool "gw") on a node
of this module's own (tls_node.py: this checkout's node emulator, which runs the gateway pod as
Debian's haproxy plus `warmbuild gateway-sync` on the pod's loopback address, and real buildkitd
with the builders' own certificates). The scheduler runs on the host as the chart's scheduler
identity, with the chart's grant CA, behind the gateway (which passes its TLS through). The runner
gets no kubeconfig and no builder address: the scheduler URL (the gateway's address), the
scheduler's CA and a token of the chart's CI ServiceAccount for the scheduler's audience.

Attacks tried: the runner's grant certificate presented to the builder directly, through the
gateway for another builder, and an expired one; each refused.
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
import time
from pathlib import Path

import pytest
import requests

kubernetes = pytest.importorskip("kubernetes")
from kubernetes.client.rest import ApiException  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from helm_render import CHART, helm  # noqa: E402
from poolkit import wait_for  # noqa: E402
from scheduler_harness import free_port  # noqa: E402
from tls_node import node_selector, private_node, toleration  # noqa: E402

from warmbuild.gateway.certs import GrantSigner, make_client_key  # noqa: E402
from warmbuild.kube.client import connect  # noqa: E402
from warmbuild.pool.leases import list_pool_leases  # noqa: E402

if not os.environ.get("KUBECONFIG") or not os.environ.get("WARMBUILD_POOL"):
    if os.environ.get("WARMBUILD_REQUIRE_TESTBED") == "1":
        raise RuntimeError('the testbed\'s control plane and pool are not up: eval "$(testbed/up)"')
    pytest.skip("the testbed's control plane and pool are not up", allow_module_level=True)

NAMESPACE = "wb-gw"  # short: the gateway pod's unix socket paths must fit 108 bytes
RELEASE = "warmbuild"
POOL = "gw"
REPLICAS = 2
BUILDERS = [f"{RELEASE}-builder-{i}" for i in range(REPLICAS)]
NODE = "warmbuild-node-gw"
FIRST_IP = "127.0.3.10"
DOMAIN = "builders.warmbuild.internal"
AUDIENCE = "warmbuild-scheduler"


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


class Setup:
    def __init__(self, directory: Path, gateway_ip: str, gateway_log: Path, url: str, scheduler_ca: Path, token: str):
        self.directory = directory
        self.gateway_ip = gateway_ip
        self.gateway_log = gateway_log
        self.url = url
        self.scheduler_ca = scheduler_ca
        self.token = token
        self.grant_ca: dict[str, Path] = {}
        self.pool_ca: Path | None = None


@pytest.fixture(scope="module")
def gateway(core, tmp_path_factory):
    state = Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "ngw"
    directory = tmp_path_factory.mktemp("gateway")
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
            f"audiences: [{AUDIENCE}]\n"
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
            setup = Setup(directory, gateway_ip, gateway_log, url, scheduler_ca, "")
            setup.token = token_for(core, f"{RELEASE}-ci", [AUDIENCE])
            setup.grant_ca = grant
            setup.pool_ca = grant["gateway-ca.crt"]
            yield setup
        finally:
            scheduler.send_signal(signal.SIGTERM)
            try:
                scheduler.wait(15)
            except subprocess.TimeoutExpired:
                scheduler.kill()
                scheduler.wait()
            log.close()
            remove_release(core)  # while the emulator runs, so that it finalizes the pods


def runner_env(setup: Setup, tmp_path: Path) -> dict:
    """A runner outside the cluster: no kubeconfig, no builder, no TLS files; the scheduler's URL and a token."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WARMBUILD_", "KUBECONFIG", "GITHUB_", "GITLAB_", "INPUT_")) and k != "CI"
    }
    env.update(
        WARMBUILD_BUILDCTL=os.environ["WARMBUILD_BUILDCTL"],
        WARMBUILD_SCHEDULER=setup.url,
        WARMBUILD_SCHEDULER_CA=str(setup.scheduler_ca),
        WARMBUILD_SCHEDULER_TOKEN=setup.token,
        XDG_RUNTIME_DIR=str(tmp_path),
        HOME=str(tmp_path),
    )
    return env


def warmbuild(*args: str) -> list[str]:
    return [sys.executable, "-m", "warmbuild.cli", *args]


def slots_held(admin) -> dict[str, str]:
    now = admin.server_now()
    return {n: v.holder for n, v in list_pool_leases(admin, NAMESPACE, POOL).items() if not v.is_free(now)}


def test_a_runner_with_only_the_scheduler_url_and_a_token_builds_and_pushes_through_the_gateway(
    gateway, tiny_app, unique_repo, tmp_path
):
    result_file = tmp_path / "result.json"
    done = subprocess.run(
        warmbuild(
            "build", str(tiny_app), "--pool", POOL, "--tag", f"{unique_repo}:gw", "--push",
            "--build-arg", f"REGISTRY={os.environ['WARMBUILD_REGISTRY']}", "--result-file", str(result_file),
        ),
        env=runner_env(gateway, tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["image"]["pushed"] is True and result["image"]["digest"].startswith("sha256:")
    builder = result["placement"]["builder_name"]
    assert builder in BUILDERS
    assert f"through the gateway tcp://{gateway.gateway_ip}:8443" in done.stderr
    log = gateway.gateway_log.read_text()
    upstream = f"upstream={builder}.{RELEASE}-builder.{NAMESPACE}.svc"
    assert any(f"builder={builder} cn={builder}" in line and upstream in line for line in log.splitlines()), log[-2000:]
    assert list((tmp_path / "warmbuild").glob("grant-*")) == []  # the key went with the grant


def acquire_with_csr(setup: Setup, directory: Path) -> tuple[dict, Path]:
    key = make_client_key(directory)
    answer = requests.post(
        f"{setup.url}/v1/pools/{POOL}/acquire",
        json={"workload_key": "gateway-attacks", "max_wait_seconds": 30, "lease_seconds": 30, "csr": key.csr_pem},
        headers={"Authorization": f"Bearer {setup.token}"},
        verify=str(setup.scheduler_ca),
        timeout=60,
    ).json()
    assert answer["decision"] == "granted", answer
    return answer, key.key_path


def release(setup: Setup, answer: dict) -> None:
    lease = answer["lease"]
    requests.post(
        f"{setup.url}/v1/slots/{lease['name']}/release",
        json={"holder": lease["holder"], "release_token": lease["release_token"]},
        headers={"Authorization": f"Bearer {setup.token}"},
        verify=str(setup.scheduler_ca),
        timeout=30,
    )


def buildctl(address: str, ca: Path, cert: Path, key: Path, server_name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            os.environ["WARMBUILD_BUILDCTL"], "--addr", address, "--tlscacert", str(ca), "--tlscert", str(cert),
            "--tlskey", str(key), "--tlsservername", server_name, "--timeout", "5", "debug", "workers",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip


def expired_certificate(setup: Setup, key_path: Path, builder: str, path: Path) -> Path:
    """A grant certificate for `builder` and this key, signed by the real grant CA, expired a minute ago."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    from cryptography.hazmat.primitives import hashes

    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    signer = GrantSigner.from_files(str(setup.grant_ca["tls.crt"]), str(setup.grant_ca["tls.key"]))
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    signed = signer.sign(csr.public_bytes(serialization.Encoding.PEM).decode(), builder, 60, now=past)
    path.write_text(signed.cert_pem)
    return path


def test_a_grant_certificate_opens_its_builder_through_the_gateway_and_nothing_else(gateway, core, tmp_path):
    answer, key = acquire_with_csr(gateway, tmp_path)
    try:
        granted = answer["builder"]["name"]
        other = next(b for b in BUILDERS if b != granted)
        ca, cert = tmp_path / "gateway-ca.crt", tmp_path / "grant.crt"
        ca.write_text(answer["gateway"]["ca"])
        cert.write_text(answer["gateway"]["certificate"])
        address = f"tcp://{gateway.gateway_ip}:8443"
        name = answer["gateway"]["server_name"]
        assert name == f"{granted}.{DOMAIN}"

        through = buildctl(address, ca, cert, key, name)
        assert through.returncode == 0, through.stderr  # the control: the same files work through the gateway

        pod_ip = core.read_namespaced_pod(granted, NAMESPACE).status.pod_ip
        direct = buildctl(f"tcp://{pod_ip}:1234", ca, cert, key, f"{granted}.{RELEASE}-builder.{NAMESPACE}.svc")
        assert direct.returncode != 0  # builders do not trust the grant CA
        assert "certificate" in direct.stderr.lower() or "tls" in direct.stderr.lower(), direct.stderr

        elsewhere = buildctl(address, ca, cert, key, f"{other}.{DOMAIN}")
        assert elsewhere.returncode != 0, elsewhere.stdout

        expired = expired_certificate(gateway, key, granted, tmp_path / "expired.crt")
        late = buildctl(address, ca, expired, key, name)
        assert late.returncode != 0, late.stdout
        log = gateway.gateway_log.read_text()
        assert f"builder={other} cn={granted}" in log  # the gateway saw and refused the wrong builder
    finally:
        release(gateway, answer)


def test_sigterm_mid_build_through_the_gateway_releases_the_slot_within_5_seconds(gateway, admin, tmp_path):
    marker = f"wb-gw-cancel-{os.getpid()}-{int(time.time())}"
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN echo {marker}-started && sleep 60 && echo {marker}-finished\n"
    )
    output = tmp_path / "output.log"
    with open(output, "w") as log:
        process = subprocess.Popen(
            warmbuild("build", str(app), "--pool", POOL, "--result-file", str(tmp_path / "result.json")),
            env=runner_env(gateway, tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
        )
    try:
        wait_for(lambda: f"{marker}-started" in output.read_text(), 120, "the RUN step to start")
        assert slots_held(admin)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143, output.read_text()[-2000:]
        wait_for(lambda: not slots_held(admin), 5, "the slot to be released")
        assert time.monotonic() - signalled < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_post_step_releases_a_killed_builds_slot_with_the_release_token_alone(gateway, admin, tmp_path):
    """The build is SIGKILLed after the grant: `warmbuild release` (the post step) has the state file,
    the scheduler URL and the token, nothing else, and gives the slot back."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN sleep 60\n")
    state = tmp_path / "state.json"
    env = {**runner_env(gateway, tmp_path), "WARMBUILD_STATE_FILE": str(state)}
    process = subprocess.Popen(
        warmbuild("build", str(app), "--pool", POOL, "--result-file", str(tmp_path / "r.json")),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        wait_for(lambda: state.exists() and slots_held(admin), 120, "the grant")
    finally:
        process.kill()
        process.wait()
    assert slots_held(admin)
    done = subprocess.run(warmbuild("release"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "released" in done.stderr and not slots_held(admin)
