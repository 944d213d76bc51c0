"""Build from anywhere: a runner with only the scheduler's URL and a token builds through the gateway.

The chart with the gateway on a private node and the scheduler behind it: gateway_harness.py. The
runner gets no kubeconfig and no builder address: the scheduler URL (the gateway's address), the
scheduler's CA and a token of the chart's CI ServiceAccount for the scheduler's audience.

Attacks tried: the runner's grant certificate presented to the builder directly, through the
gateway for another builder, and an expired one; each refused. Cancellation through the gateway
path: SIGTERM mid-build frees the slot within 5 s; a killed build's slot is freed by the post step
with the release token alone. A fork pull request (a token of the testbed's OIDC issuer, verified by
the API server) gets an ephemeral builder the scheduler starts, reached through the gateway with
cache import only; no private key is in the scheduler's answer, and the pod is deleted on release.
"""

from __future__ import annotations

import datetime
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

if not os.environ.get("KUBECONFIG") or not os.environ.get("WARMBUILD_POOL"):
    if os.environ.get("WARMBUILD_REQUIRE_TESTBED") == "1":
        raise RuntimeError('the testbed\'s control plane and pool are not up: eval "$(testbed/up)"')
    pytest.skip("the testbed's control plane and pool are not up", allow_module_level=True)

from gateway_harness import (  # noqa: E402
    AUDIENCE,
    BUILDERS,
    DOMAIN,
    NAMESPACE,
    POOL,
    RELEASE,
    gateway_release,
    secret_files,
)
from gateway_harness import GatewaySetup as Setup  # noqa: E402
from poolkit import wait_for  # noqa: E402

from warmbuild.gateway.certs import GrantSigner, make_client_key  # noqa: E402
from warmbuild.pool.leases import list_pool_leases  # noqa: E402


@pytest.fixture(scope="module")
def gateway(core, tmp_path_factory):
    with gateway_release(core, tmp_path_factory.mktemp("gateway")) as setup:
        yield setup


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


def running_with(marker: str) -> list[int]:
    """Processes whose command line has `marker` (the RUN step of the build, on the builder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


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
        assert direct.returncode != 0, direct.stdout  # builders do not trust the grant CA (the handshake is cut)
        chart = secret_files(core, f"{RELEASE}-client-tls", tmp_path / "chart-client")
        in_cluster = buildctl(
            f"tcp://{pod_ip}:1234",
            chart["ca.crt"],
            chart["tls.crt"],
            chart["tls.key"],
            f"{granted}.{RELEASE}-builder.{NAMESPACE}.svc",
        )
        assert in_cluster.returncode == 0, in_cluster.stderr  # the same builder, an in-cluster CI identity: accepted

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
        wait_for(lambda: running_with(marker), 120, "the RUN step to start")
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


# -- an untrusted caller's ephemeral builder, through the gateway --------------------------------------

MANIFEST_TYPES = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"


def oidc():
    """The testbed's OIDC issuer stand-in (its own minting code), or a skip on a testbed without it."""
    if not os.environ.get("WARMBUILD_OIDC_ISSUER"):
        pytest.skip("no testbed OIDC issuer (testbed/up)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))
    import oidc_issuer

    return oidc_issuer


def github_fork_job(claims: dict) -> dict[str, str]:
    """A GitHub job's OIDC environment (the stand-in's token-request endpoint), and nothing else."""
    issuer = f"{os.environ['WARMBUILD_OIDC_ISSUER']}/github"
    job = requests.post(f"{issuer}/jobs", json=claims, verify=os.environ["WARMBUILD_OIDC_CA"], timeout=10).json()
    return {
        "ACTIONS_ID_TOKEN_REQUEST_URL": job["request_url"],
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": job["request_token"],
        "REQUESTS_CA_BUNDLE": os.environ["WARMBUILD_OIDC_CA"],  # the stand-in's CA, for the token request only
        "WARMBUILD_SCHEDULER_OIDC_AUDIENCE": AUDIENCE,
    }


def pod_gone(core, name: str) -> bool:
    return not core.list_namespaced_pod(NAMESPACE, field_selector=f"metadata.name={name}").items


def test_a_fork_pull_requests_ephemeral_builder_is_granted_through_the_gateway_without_a_private_key(
    gateway, core, tmp_path
):
    issuer = oidc()
    token = issuer.mint("github", AUDIENCE, issuer.github_claims("octo-org/a", "pull_request"), 300)
    key = make_client_key(tmp_path)
    body = {"workload_key": "fork", "max_wait_seconds": 0, "lease_seconds": 30, "csr": key.csr_pem}
    answer = requests.post(
        f"{gateway.url}/v1/pools/{POOL}/acquire",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        verify=str(gateway.scheduler_ca),
        timeout=60,
    ).json()
    assert answer["decision"] == "granted" and answer["path"] == "ephemeral" and answer["untrusted"] is True, answer
    name = answer["builder"]["name"]
    try:
        assert "run_tls" not in answer and "PRIVATE KEY" not in json.dumps(answer)
        assert answer["gateway"]["server_name"] == f"{name}.{DOMAIN}"
        assert answer["gateway"]["address"] == f"{gateway.gateway_ip}:8443"
        from warmbuild.gateway.certs import certificate_name

        assert certificate_name(answer["gateway"]["certificate"].encode()) == name
        pod = core.read_namespaced_pod(name, NAMESPACE)
        assert pod.metadata.labels.get("warmbuild.dev/untrusted") == "true", pod.metadata.labels
    finally:
        lease = answer["lease"]
        released = requests.post(
            f"{gateway.url}/v1/slots/{lease['name']}/release",
            json={"holder": lease["holder"], "release_token": lease["release_token"]},
            headers={"Authorization": f"Bearer {token}"},
            verify=str(gateway.scheduler_ca),
            timeout=30,
        ).json()
    assert released == {"released": True}
    wait_for(lambda: pod_gone(core, name), 30, f"ephemeral builder {name} deleted")


def test_a_fork_pull_request_builds_through_the_gateway_on_its_ephemeral_builder_with_cache_import_only(
    gateway, core, tiny_app, unique_repo, tmp_path
):
    issuer = oidc()
    env = runner_env(gateway, tmp_path)
    del env["WARMBUILD_SCHEDULER_TOKEN"]  # the job's own OIDC token, verified by the API server
    env.update(github_fork_job(issuer.github_claims("octo-org/a", "pull_request")))
    result_file = tmp_path / "result.json"
    done = subprocess.run(
        warmbuild(
            "build", str(tiny_app), "--pool", POOL, "--tag", f"{unique_repo}:pr", "--push",
            "--cache-to", f"type=registry,ref={unique_repo}:shared,mode=max",
            "--build-arg", f"REGISTRY={os.environ['WARMBUILD_REGISTRY']}", "--result-file", str(result_file),
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the scheduler found this build untrusted" in done.stderr
    assert "--cache-to dropped (1 export(s)): an untrusted build never writes a cache" in done.stderr
    result = json.loads(result_file.read_text())
    assert result["placement"]["path"] == "ephemeral", result["placement"]
    name = result["placement"]["builder_name"]
    assert f"through the gateway tcp://{gateway.gateway_ip}:8443" in done.stderr
    log = gateway.gateway_log.read_text()
    assert any(f"builder={name} cn={name}" in line and f"upstream={name} " in line for line in log.splitlines()), log[
        -2000:
    ]
    host, _, repo = unique_repo.partition("/")
    for tag in ("shared", "buildcache"):  # the user's cache export, and warmbuild's own: both absent
        manifest = requests.get(
            f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10
        )
        assert manifest.status_code == 404, tag
    assert requests.get(f"http://{host}/v2/{repo}/tags/list", timeout=10).json()["tags"] == ["pr"]
    wait_for(lambda: pod_gone(core, name), 30, f"ephemeral builder {name} deleted on release")
    assert list((tmp_path / "warmbuild").glob("grant-*")) == []  # the runner's key went with the grant
