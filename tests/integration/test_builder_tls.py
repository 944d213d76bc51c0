"""Every builder proves who it is: the chart's default (mTLS, one certificate per builder) on the
real control plane, with real buildkitd serving TLS from the pods' Secret volumes.

The chart is installed (release "warmbuild", namespace warmbuild-chart, pool "tls") on a node
of this module's own (tls_node.py: this checkout's node emulator, which honours the pods' TLS
volumes and args), and removed afterwards. Attacks tried:

- a plaintext client, and a client without a certificate, against a default-chart builder: refused;
- a builder that presents another builder's certificate (builder-1's pair planted in builder-0's
  place): the CI step refuses it with one line naming the certificate check, and its slot is free;
- an ephemeral builder for a TLS-configured pool: served over mTLS with the run's own certificate,
  its Secret gone with its pod.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from helm_render import CHART, helm  # noqa: E402
from poolkit import wait_for  # noqa: E402
from tls_node import node_selector, private_node, service_account_kubeconfig, toleration  # noqa: E402

from warmbuild.pool.affinity import preference_order  # noqa: E402

if not os.environ.get("KUBECONFIG") or not os.environ.get("WARMBUILD_POOL"):
    if os.environ.get("WARMBUILD_REQUIRE_TESTBED") == "1":
        raise RuntimeError('the testbed\'s control plane and pool are not up: eval "$(testbed/up)"')
    pytest.skip("the testbed's control plane and pool are not up", allow_module_level=True)

NAMESPACE = "warmbuild-chart"
RELEASE = "warmbuild"
POOL = "tls"  # short: the emulator's per-pod unix socket paths must fit 108 bytes
REPLICAS = 2
BUILDERS = [f"{RELEASE}-builder-{i}" for i in range(REPLICAS)]
NODE = "warmbuild-node-tls"
FIRST_IP = "127.0.2.10"


def server_name(pod: str) -> str:
    return f"{pod}.{RELEASE}-builder.{NAMESPACE}.svc"


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


@pytest.fixture(scope="module")
def release(core, tmp_path_factory):
    state = Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "ntls"
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
            "--set-json",
            f"builder.nodeSelector={json.dumps(node_selector(NODE))}",
            "--set-json",
            f"builder.tolerations={json.dumps([toleration(NODE)])}",
            timeout=240,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        try:
            yield tmp_path_factory.mktemp("chart-tls")
        finally:
            remove_release(core)  # while the emulator runs, so that it finalizes the pods


@pytest.fixture(scope="module")
def client_files(release, core) -> dict[str, Path]:
    """The chart's client certificate for CI runners, read as admin (CI identities cannot)."""
    secret = core.read_namespaced_secret(f"{RELEASE}-client-tls", NAMESPACE)
    files = {}
    for key in ("ca.crt", "tls.crt", "tls.key"):
        path = release / f"client-{key}"
        path.write_bytes(base64.b64decode(secret.data[key]))
        path.chmod(0o600)
        files[key] = path
    return files


def tls_flags(files: dict[str, Path]) -> list[str]:
    return ["--tls-ca", str(files["ca.crt"]), "--tls-cert", str(files["tls.crt"]), "--tls-key", str(files["tls.key"])]


def builder_ip(core, name: str) -> str:
    return core.read_namespaced_pod(name, NAMESPACE).status.pod_ip


def buildctl(address: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.environ["WARMBUILD_BUILDCTL"], "--addr", address, *flags, "--timeout", "5", "debug", "workers"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_default_chart_builder_refuses_plaintext_and_clients_without_a_certificate(release, core, client_files):
    address = f"tcp://{builder_ip(core, BUILDERS[0])}:1234"
    plaintext = buildctl(address)
    assert plaintext.returncode != 0, plaintext.stdout
    no_client_certificate = buildctl(
        address, "--tlscacert", str(client_files["ca.crt"]), "--tlsservername", server_name(BUILDERS[0])
    )
    assert no_client_certificate.returncode != 0, no_client_certificate.stdout
    # The same builder answers a client with the chart's certificate that checks its own name.
    mtls = buildctl(
        address,
        "--tlscacert",
        str(client_files["ca.crt"]),
        "--tlscert",
        str(client_files["tls.crt"]),
        "--tlskey",
        str(client_files["tls.key"]),
        "--tlsservername",
        server_name(BUILDERS[0]),
    )
    assert mtls.returncode == 0, mtls.stderr
    # ... and no other builder's name: its certificate names it alone.
    other = buildctl(
        address,
        "--tlscacert",
        str(client_files["ca.crt"]),
        "--tlscert",
        str(client_files["tls.crt"]),
        "--tlskey",
        str(client_files["tls.key"]),
        "--tlsservername",
        server_name(BUILDERS[1]),
    )
    assert other.returncode != 0 and "x509" in other.stderr, other.stderr


def key_first_on(builder: str) -> str:
    for i in range(10_000):
        key = f"builder-tls-test-{i}"
        if preference_order(key, BUILDERS)[0] == builder:
            return key
    raise AssertionError(f"no key prefers {builder}")


def tiny_dockerfile(tmp_path: Path) -> Path:
    app = tmp_path / f"app-{uuid.uuid4().hex[:6]}"
    app.mkdir()
    (app / "Dockerfile").write_text(f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN echo {uuid.uuid4().hex} >/stamp\n")
    return app


def pool_build(
    app: Path, kubeconfig: Path, files, tmp_path: Path, *extra: str
) -> tuple[subprocess.CompletedProcess, Path]:
    result = tmp_path / f"result-{uuid.uuid4().hex[:6]}.json"
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    for name in ("WARMBUILD_BUILDER", "WARMBUILD_POOL", "WARMBUILD_NAMESPACE"):
        env.pop(name, None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "warmbuild.cli",
            "build",
            str(app),
            "--pool",
            POOL,
            "--namespace",
            NAMESPACE,
            *tls_flags(files),
            "--result-file",
            str(result),
            "--state-file",
            str(tmp_path / f"state-{uuid.uuid4().hex[:6]}.json"),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    return done, result


def held_slots(api) -> list[str]:
    leases = client.CoordinationV1Api(api).list_namespaced_lease(NAMESPACE, label_selector=f"warmbuild.dev/pool={POOL}")
    return [lease.metadata.name for lease in leases.items if lease.spec.holder_identity]


def test_a_pool_build_verifies_the_leased_builders_own_name(release, core, client_files, tmp_path):
    kubeconfig = service_account_kubeconfig(core, f"{RELEASE}-ci", NAMESPACE, tmp_path / "ci.yaml")
    done, result = pool_build(
        tiny_dockerfile(tmp_path), kubeconfig, client_files, tmp_path, "--cache-key", key_first_on(BUILDERS[1])
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(result.read_text())
    assert report["placement"]["builder_name"] == BUILDERS[1] and report["placement"]["path"] == "warm"


def test_a_builder_presenting_another_builders_certificate_is_refused_and_no_slot_leaks(
    release, core, api, client_files, tmp_path
):
    """builder-1's key in builder-0's place (a stolen key, or a shared certificate): the CI step
    that leased builder-0 checks builder-0's name and refuses, in one line, before any build."""
    secret_name = f"{RELEASE}-builder-tls"
    original = core.read_namespaced_secret(secret_name, NAMESPACE).data
    planted = dict(original)
    planted[f"{BUILDERS[0]}.crt"], planted[f"{BUILDERS[0]}.key"] = (
        original[f"{BUILDERS[1]}.crt"],
        original[f"{BUILDERS[1]}.key"],
    )
    kubeconfig = service_account_kubeconfig(core, f"{RELEASE}-ci", NAMESPACE, tmp_path / "ci.yaml")

    def restart_builder_0():
        old_uid = core.read_namespaced_pod(BUILDERS[0], NAMESPACE).metadata.uid
        core.delete_namespaced_pod(BUILDERS[0], NAMESPACE, grace_period_seconds=0)

        def ready_again():
            try:
                pod = core.read_namespaced_pod(BUILDERS[0], NAMESPACE)
            except ApiException:
                return None
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            return pod if pod.metadata.uid != old_uid and ready else None

        wait_for(ready_again, 120, f"{BUILDERS[0]} to come back Ready")

    core.patch_namespaced_secret(secret_name, NAMESPACE, {"data": planted})
    try:
        restart_builder_0()
        done, result = pool_build(
            tiny_dockerfile(tmp_path),
            kubeconfig,
            client_files,
            tmp_path,
            "--cache-key",
            key_first_on(BUILDERS[0]),
            "--max-wait",
            "0",
            "--fallback",
            "fail",
        )
        assert done.returncode == 3, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("warmbuild: error:")]
        assert len(errors) == 1, done.stderr
        assert f"failed the TLS check as {server_name(BUILDERS[0])}" in errors[0]
        assert "x509" in errors[0] and "certificate" in errors[0]
        assert "Traceback" not in done.stderr
        report = json.loads(result.read_text())
        assert report["status"] == "failed" and report["exit_code"] == 3
        assert held_slots(api) == []  # the slot was given back at once
    finally:
        core.patch_namespaced_secret(secret_name, NAMESPACE, {"data": original})
        restart_builder_0()


def test_an_ephemeral_builder_serves_mtls_with_the_runs_own_certificate(release, core, api, client_files, tmp_path):
    rbac = client.RbacAuthorizationV1Api(api)
    # What the CI Role needs for ephemeral builders besides pods: Secrets create (the run's certificate).
    rbac.create_namespaced_role(
        NAMESPACE,
        {
            "metadata": {"name": "test-run-secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        NAMESPACE,
        {
            "metadata": {"name": "test-run-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "test-run-secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": f"{RELEASE}-ci", "namespace": NAMESPACE}],
        },
    )
    try:
        config = tmp_path / "ephemeral.yaml"
        config.write_text(json.dumps({"nodeSelector": node_selector(NODE), "tolerations": [toleration(NODE)]}))
        kubeconfig = service_account_kubeconfig(core, f"{RELEASE}-ci", NAMESPACE, tmp_path / "ci.yaml")
        done, result = pool_build(
            tiny_dockerfile(tmp_path),
            kubeconfig,
            client_files,
            tmp_path,
            "--untrusted",
            "--ephemeral-config",
            str(config),
            "--ephemeral-timeout",
            "90",
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(result.read_text())
        assert report["status"] == "success" and report["placement"]["path"] == "ephemeral"
        pod = report["placement"]["builder_name"]
        assert pod.startswith(f"warmbuild-{POOL}-ephemeral-")

        def gone():
            pods = core.list_namespaced_pod(NAMESPACE, label_selector="warmbuild.dev/ephemeral=true").items
            secrets = core.list_namespaced_secret(NAMESPACE, label_selector="warmbuild.dev/ephemeral=true").items
            return not pods and not secrets

        wait_for(gone, 60, "the ephemeral pod and its certificate Secret to be deleted")
    finally:
        rbac.delete_namespaced_role_binding("test-run-secrets", NAMESPACE)
        rbac.delete_namespaced_role("test-run-secrets", NAMESPACE)
