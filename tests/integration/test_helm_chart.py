"""The Helm chart on the testbed's real control plane: every rendered object accepted by the real
kube-apiserver, the chart installed and building, a drained scale-down, and a clean uninstall.

Needs `eval "$(testbed/up)"` (KUBECONFIG, WARMBUILD_HELM, WARMBUILD_TESTBED_DIR, WARMBUILD_BASE_IMAGE).

Storage: the testbed has no provisioner, so the install runs on a `local` StorageClass
(no-provisioner, WaitForFirstConsumer) with PersistentVolumes made here, each pinned to the emulated
node; the real kube-scheduler and PV controller bind them. The node emulator mounts nothing (each
pod's buildkitd has its own state directory), so the volume is real in the API and nowhere else.
The builders' preStop runs on the host (the node emulator does that), so `drain.command` points at
this virtualenv's `warmbuild` instead of the one inside the builder image.

mTLS, the chart's default, is real: the install runs on a node of its own (tls_node.py: this
checkout's node emulator, which serves each builder's own certificate from its Secret volume), and
CI steps build with the client certificate from `<release>-client-tls`, read as admin.
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, config, dynamic, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402
from kubernetes.dynamic.exceptions import ResourceNotFoundError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from helm_render import CHART, VARIANTS, helm, template_command  # noqa: E402
from poolkit import wait_for  # noqa: E402
from tls_node import node_selector, private_node, service_account_kubeconfig, toleration  # noqa: E402

from warmbuild.pool.affinity import preference_order  # noqa: E402

if not os.environ.get("KUBECONFIG") or not os.environ.get("WARMBUILD_POOL"):
    if os.environ.get("WARMBUILD_REQUIRE_TESTBED") == "1":
        raise RuntimeError('the testbed\'s control plane and pool are not up: eval "$(testbed/up)"')
    pytest.skip("the testbed's control plane and pool are not up", allow_module_level=True)

NAMESPACE = "warmbuild-chart"
RELEASE = "warmbuild"
POOL = "chart"
REPLICAS = 3
BUILDERS = [f"{RELEASE}-builder-{i}" for i in range(REPLICAS)]
STORAGE_CLASS = "warmbuild-chart-local"
NODE = "warmbuild-node-tls"  # this module's own (tls_node.py)
FIRST_IP = "127.0.2.10"
GRACE_SECONDS = 120  # the drain then waits at most 90 s
FIELD_MANAGER = "warmbuild-chart-test"
# Kinds whose CRDs the testbed does not have: checked by `helm template`/lint and the unit tests only.
NOT_SERVED = {
    "ScaledObject": "KEDA is not installed on the testbed (no keda.sh CRDs)",
    "Certificate": "cert-manager is not installed on the testbed (no cert-manager.io CRDs)",
    "Issuer": "cert-manager is not installed on the testbed (no cert-manager.io CRDs)",
}


@pytest.fixture(scope="module")
def resources(api):
    return dynamic.DynamicClient(api).resources


def ignore_missing(action, *args, **kwargs):
    try:
        return action(*args, **kwargs)
    except ApiException as error:
        if error.status != 404:
            raise


def namespace_gone(core, name: str) -> bool:
    try:
        core.read_namespace(name)
        return False
    except ApiException as error:
        if error.status == 404:
            return True
        raise


def delete_namespace_and_wait(core, name: str, timeout: float = 120) -> None:
    ignore_missing(core.delete_namespace, name)
    wait_for(lambda: namespace_gone(core, name), timeout, f"namespace {name} to be deleted")


# ------------------------------------------------------------ every rendered object, real API server


def apply(resources, doc: dict, dry_run: bool):
    resource = resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    meta = doc["metadata"]
    return resource.server_side_apply(
        body=doc,
        name=meta["name"],
        namespace=meta.get("namespace"),
        field_manager=FIELD_MANAGER,
        force_conflicts=True,
        **({"dry_run": "All"} if dry_run else {}),
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_accepted_by_the_api_server(variant, core, resources):
    namespace = f"warmbuild-render-{variant}"
    core.create_namespace({"metadata": {"name": namespace, "labels": {"warmbuild.dev/test": "helm-render"}}})
    cluster_scoped = []
    try:
        done = helm(*template_command(variant=variant, namespace=namespace))
        assert done.returncode == 0, done.stderr
        docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        skipped, accepted = [], []
        for doc in docs:
            try:
                resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            except ResourceNotFoundError:
                assert doc["kind"] in NOT_SERVED, f"{doc['apiVersion']} {doc['kind']} is not served by the API server"
                skipped.append(f"{doc['kind']} {doc['metadata']['name']}: {NOT_SERVED[doc['kind']]}")
                continue
            apply(resources, doc, dry_run=True)  # validation, admission, RBAC escalation checks
            accepted.append(doc)
        # Then for real (replicas 0: the objects matter here, not pods; the install test runs pods).
        done = helm(
            *template_command(variant=variant, namespace=namespace, sets=("builder.replicas=0", "scheduler.replicas=0"))
        )
        assert done.returncode == 0, done.stderr
        for doc in yaml.safe_load_all(done.stdout):
            if not doc or doc["kind"] in NOT_SERVED:
                continue
            stored = apply(resources, doc, dry_run=False)
            assert stored.metadata.uid
            if not doc["metadata"].get("namespace"):
                cluster_scoped.append(doc)
        print(f"{variant}: {len(accepted)} objects accepted (dry run, then for real); skipped: {skipped or 'none'}")
        expected_skips = {"autoscaling-keda": {"ScaledObject"}, "mtls-cert-manager": {"Certificate", "Issuer"}}
        assert {line.split()[0] for line in skipped} == expected_skips.get(variant, set())
    finally:
        for doc in cluster_scoped:
            resource = resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            ignore_missing(resource.delete, name=doc["metadata"]["name"])
        ignore_missing(core.delete_namespace, namespace)


def test_rendered_buildkitd_config_runs_a_real_buildkitd_with_the_derived_gc_limits(tmp_path):
    """The node emulator runs the testbed's own buildkitd.toml, so the chart's is checked here: a real
    buildkitd starts with it and reports the GC limits derived from a 200Gi volume."""
    done = helm(*template_command(sets=("persistence.size=200Gi",), extra=("--show-only", "templates/configmap.yaml")))
    assert done.returncode == 0, done.stderr
    config_file = tmp_path / "buildkitd.toml"
    config_file.write_text(yaml.safe_load(done.stdout)["data"]["buildkitd.toml"])
    address = "127.0.0.6"
    with socket.socket() as probe:
        assert probe.connect_ex((address, 1234)) != 0, f"{address}:1234 is in use"
    buildctl = os.environ["WARMBUILD_BUILDCTL"]
    log = open(tmp_path / "buildkitd.log", "w")
    daemon = subprocess.Popen(
        [
            str(Path(buildctl).parent / "buildkitd"),
            "--config",
            str(config_file),
            "--addr",
            f"tcp://{address}:1234",
            "--root",
            str(tmp_path / "root"),
            "--otel-socket-path",
            str(tmp_path / "otel.sock"),
            "--oci-worker-net",
            "host",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def workers():
            answer = subprocess.run(
                [buildctl, "--addr", f"tcp://{address}:1234", "debug", "workers", "--verbose"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return answer.stdout if answer.returncode == 0 else None

        listing = wait_for(workers, 60, "the buildkitd with the chart's config to answer")
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()

    def sizes(label: str) -> set[int]:
        return {round(float(value) * 1e9) for value in re.findall(rf"{label}:\s+([0-9.]+)GB", listing)}

    mib = 2**20
    assert sizes("Maximum used space") == {174080 * mib}  # 85 % of 200 GiB (rule 0, "512MB", is buildkitd's own)
    assert sizes("Minimum free space") == {20480 * mib}
    assert sizes("Reserved space") == {20480 * mib}


# --------------------------------------------------------------------------- the chart, installed


def local_volumes(core, storage, run_id: str, count: int) -> list[str]:
    """A no-provisioner StorageClass and `count` local PVs on the emulated node."""
    try:
        storage.create_storage_class(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": STORAGE_CLASS, "labels": {"warmbuild.dev/test": "helm-chart"}},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Retain",
            }
        )
    except ApiException as error:
        if error.status != 409:
            raise
    names = []
    root = Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "local-pv"
    for i in range(count):
        name = f"warmbuild-chart-{run_id}-{i}"
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        core.create_persistent_volume(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {"warmbuild.dev/test": "helm-chart"}},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": STORAGE_CLASS,
                    "local": {"path": str(path)},
                    "nodeAffinity": {
                        "required": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}
                                    ]
                                }
                            ]
                        }
                    },
                },
            }
        )
        names.append(name)
    return names


def node_state_dir() -> Path:
    return Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "ntls"


def remove_leftovers(core, storage) -> None:
    """What an interrupted earlier run may have left: the release, its namespace, the test PVs."""
    if helm("status", RELEASE, "--namespace", NAMESPACE).returncode == 0:
        helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "120s", timeout=180)
    delete_namespace_and_wait(core, NAMESPACE)
    for pv in core.list_persistent_volume(label_selector="warmbuild.dev/test=helm-chart").items:
        ignore_missing(core.delete_persistent_volume, pv.metadata.name)
    ignore_missing(storage.delete_storage_class, STORAGE_CLASS)
    shutil.rmtree(Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "local-pv", ignore_errors=True)
    # The node emulator keeps a StatefulSet pod's buildkitd root (its stand-in for the volume).
    for pod_dir in (node_state_dir() / "pods").glob(f"{NAMESPACE}_*"):
        shutil.rmtree(pod_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_node(core):
    with private_node(core, NODE, FIRST_IP, node_state_dir()) as node:
        yield node


@pytest.fixture(scope="module")
def release(api, core, tls_node, tmp_path_factory):
    """The chart installed in its own namespace on local PVs; everything removed afterwards."""
    storage = client.StorageV1Api(api)
    remove_leftovers(core, storage)
    pvs = local_volumes(core, storage, uuid.uuid4().hex[:6], REPLICAS)
    warmbuild = Path(sys.executable).parent / "warmbuild"
    assert warmbuild.is_file(), f"{warmbuild}: the project virtualenv has no warmbuild entry point"
    started = time.monotonic()
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
        f"persistence.storageClassName={STORAGE_CLASS}",
        "--set",
        "persistence.size=10Gi",
        "--set",
        f"builder.terminationGracePeriodSeconds={GRACE_SECONDS}",
        "--set-json",
        f"drain.command={json.dumps([str(warmbuild)])}",
        "--set-json",
        f"builder.nodeSelector={json.dumps(node_selector(NODE))}",
        "--set-json",
        f"builder.tolerations={json.dumps([toleration(NODE)])}",
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"helm install --wait: {time.monotonic() - started:.1f}s")
    try:
        secret = core.read_namespaced_secret(f"{RELEASE}-client-tls", NAMESPACE)  # as admin: CI cannot
        tls = {}
        for key in ("ca.crt", "tls.crt", "tls.key"):
            tls[key] = tmp_path_factory.mktemp("client-tls") / key
            tls[key].write_bytes(base64.b64decode(secret.data[key]))
        yield {"pvs": pvs, "tls": tls}
    finally:
        remove_leftovers(core, storage)


def ready(pod) -> bool:
    return (
        pod.metadata.deletion_timestamp is None
        and pod.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    )


def pool_pods(core):
    return core.list_namespaced_pod(NAMESPACE, label_selector=f"warmbuild.dev/pool={POOL}").items


def test_install_runs_ready_builders_on_bound_local_volumes(release, core, api):
    statefulset = client.AppsV1Api(api).read_namespaced_stateful_set(f"{RELEASE}-builder", NAMESPACE)
    assert statefulset.status.ready_replicas == REPLICAS  # the real StatefulSet controller made them
    pods = wait_for(
        lambda: (lambda ps: ps if len(ps) == REPLICAS and all(map(ready, ps)) else None)(pool_pods(core)),
        60,
        f"{REPLICAS} Ready builders",
    )
    assert sorted(p.metadata.name for p in pods) == BUILDERS
    for pod in pods:
        assert pod.spec.node_name == NODE
        assert pod.metadata.annotations["warmbuild.dev/slots"] == "2"
        assert pod.spec.service_account_name == f"{RELEASE}-builder"
        address, tls = f"tcp://{pod.status.pod_ip}:1234", release["tls"]
        plaintext = subprocess.run(
            [os.environ["WARMBUILD_BUILDCTL"], "--addr", address, "--timeout", "5", "debug", "workers"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert plaintext.returncode != 0  # mTLS is the default: no plaintext client gets in
        done = subprocess.run(
            [os.environ["WARMBUILD_BUILDCTL"], "--addr", address]
            + ["--tlscacert", str(tls["ca.crt"]), "--tlscert", str(tls["tls.crt"]), "--tlskey", str(tls["tls.key"])]
            + ["--tlsservername", f"{pod.metadata.name}.{RELEASE}-builder.{NAMESPACE}.svc", "debug", "workers"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr  # a real buildkitd answers for every builder, as itself
    claims = {c.metadata.name: c for c in core.list_namespaced_persistent_volume_claim(NAMESPACE).items}
    assert sorted(claims) == [f"state-{name}" for name in BUILDERS]
    for claim in claims.values():
        assert claim.status.phase == "Bound"
        assert claim.spec.storage_class_name == STORAGE_CLASS
        assert claim.spec.volume_name in release["pvs"]  # bound by the real scheduler + PV controller
        volume = core.read_persistent_volume(claim.spec.volume_name)
        assert (volume.spec.claim_ref.namespace, volume.spec.claim_ref.name) == (NAMESPACE, claim.metadata.name)
        assert claim.metadata.annotations.get("pv.kubernetes.io/bind-completed") == "yes"


def ci_kubeconfig(core, tmp_path: Path) -> Path:
    """A kubeconfig for the chart's CI ServiceAccount, its token minted with TokenRequest as admin."""
    return service_account_kubeconfig(core, f"{RELEASE}-ci", NAMESPACE, tmp_path / "ci-kubeconfig.yaml")


def can(
    kubeconfig: Path,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str = NAMESPACE,
    subresource: str = "",
    name: str = "",
) -> bool:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": subresource,
                    "name": name,
                }
            },
        }
    )
    return review.status.allowed


def sleep_app(tmp_path: Path, seconds: int) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN echo {uuid.uuid4().hex} >/stamp && sleep {seconds}\n"
    )
    return app


def start_build(app: Path, kubeconfig: Path, cache_key: str, result: Path, tls: dict) -> subprocess.Popen:
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    for name in ("WARMBUILD_BUILDER", "WARMBUILD_POOL", "WARMBUILD_NAMESPACE"):
        env.pop(name, None)
    return subprocess.Popen(
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
            "--cache-key",
            cache_key,
            "--result-file",
            str(result),
            *("--tls-ca", str(tls["ca.crt"]), "--tls-cert", str(tls["tls.crt"]), "--tls-key", str(tls["tls.key"])),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def key_first_on(builder: str) -> str:
    for i in range(10_000):
        key = f"helm-chart-test-{i}"
        if preference_order(key, BUILDERS)[0] == builder:
            return key
    raise AssertionError(f"no key prefers {builder}")


def test_ci_service_account_from_the_chart_builds_through_the_pool(release, core, tmp_path):
    kubeconfig = ci_kubeconfig(core, tmp_path)
    # Least privilege, as the API server's authorizer sees it.
    assert can(kubeconfig, "list", "pods") and can(kubeconfig, "create", "leases", "coordination.k8s.io")
    assert can(kubeconfig, "list", "statefulsets", "apps")  # membership is verified by the controller
    assert not can(kubeconfig, "delete", "leases", "coordination.k8s.io")  # stale Leases are adopted
    history = f"warmbuild-history-{POOL}"
    assert can(kubeconfig, "update", "configmaps", name=history)
    assert not can(kubeconfig, "update", "configmaps", name=f"{RELEASE}-builder")  # buildkitd.toml
    assert not can(kubeconfig, "create", "configmaps") and not can(kubeconfig, "get", "pods", subresource="log")
    assert not can(kubeconfig, "patch", "pods")  # only the builders mark themselves draining
    assert not can(kubeconfig, "get", "secrets")
    assert not can(kubeconfig, "patch", "statefulsets", "apps")
    assert not can(kubeconfig, "list", "pods", namespace="warmbuild")  # nothing outside its namespace

    key = key_first_on(BUILDERS[0])
    result = tmp_path / "result.json"
    build = start_build(sleep_app(tmp_path, 1), kubeconfig, key, result, release["tls"])
    output, _ = build.communicate(timeout=300)
    assert build.returncode == 0, output
    report = json.loads(result.read_text())
    assert report["status"] == "success"
    assert report["placement"]["builder_name"] == BUILDERS[0]
    assert report["placement"]["path"] == "warm" and report["placement"]["affine"] is True


class Recorder:
    """Watch events with the local monotonic time they arrived, in a thread."""

    def __init__(self, list_call, *args, **kwargs):
        self.events: list[tuple[float, str, object]] = []
        self.error: Exception | None = None
        self.watch = watch.Watch()
        self.thread = threading.Thread(target=self._run, args=(list_call, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, list_call, args, kwargs):
        try:
            for event in self.watch.stream(list_call, *args, timeout_seconds=240, **kwargs):
                self.events.append((time.monotonic(), event["type"], event["object"]))
        except Exception as error:  # the stream ends when stopped; anything before that shows in the asserts
            self.error = error

    def stop(self):
        self.watch.stop()


def test_scale_down_waits_for_the_build_holding_a_slot_on_the_highest_ordinal(release, core, api, tmp_path):
    apps = client.AppsV1Api(api)
    coordination = client.CoordinationV1Api(api)
    victim = BUILDERS[-1]  # a StatefulSet scales down from the highest ordinal
    pod = core.read_namespaced_pod(victim, NAMESPACE)
    kubeconfig = ci_kubeconfig(core, tmp_path)
    pods = Recorder(
        core.list_namespaced_pod,
        NAMESPACE,
        field_selector=f"metadata.name={victim}",
        resource_version=pod.metadata.resource_version,
    )
    leases = Recorder(coordination.list_namespaced_lease, NAMESPACE, label_selector=f"warmbuild.dev/builder={victim}")
    result = tmp_path / "result.json"
    build = start_build(sleep_app(tmp_path, 20), kubeconfig, key_first_on(victim), result, release["tls"])
    try:
        held = wait_for(
            lambda: next(
                (obj for _t, kind, obj in list(leases.events) if kind != "DELETED" and obj.spec.holder_identity), None
            ),
            60,
            f"a slot on {victim}",
        )
        time.sleep(3)  # the solve is running: RUN sleep 20
        scaled_at = time.monotonic()
        apps.patch_namespaced_stateful_set_scale(f"{RELEASE}-builder", NAMESPACE, {"spec": {"replicas": REPLICAS - 1}})
        output, _ = build.communicate(timeout=300)
        build_done_at = time.monotonic()
        wait_for(lambda: any(kind == "DELETED" for _t, kind, _o in pods.events), 120, f"{victim} to be gone")
    finally:
        if build.poll() is None:
            build.kill()
        pods.stop()
        leases.stop()

    assert build.returncode == 0, output
    report = json.loads(result.read_text())
    assert report["status"] == "success" and report["placement"]["builder_name"] == victim

    slot = held.metadata.name
    released_at = next(
        t
        for t, kind, obj in leases.events
        if obj.metadata.name == slot and kind == "MODIFIED" and not obj.spec.holder_identity
    )
    deleting_at = next(t for t, _kind, obj in pods.events if obj.metadata.deletion_timestamp)
    draining_at = next(
        t for t, _kind, obj in pods.events if (obj.metadata.annotations or {}).get("warmbuild.dev/draining") == "true"
    )
    gone_at = next(t for t, kind, _obj in pods.events if kind == "DELETED")
    print(
        f"scale-down: deletion +{deleting_at - scaled_at:.1f}s, marked draining +{draining_at - scaled_at:.1f}s, "
        f"build done +{build_done_at - scaled_at:.1f}s, slot released +{released_at - scaled_at:.1f}s, "
        f"pod gone +{gone_at - scaled_at:.1f}s"
    )
    # The pod was being deleted while the build ran; it went away only after the build gave the slot back.
    assert deleting_at < released_at and draining_at < released_at
    assert released_at < gone_at
    assert gone_at - released_at < 10  # and promptly after that (poll 1 s)
    log = (node_state_dir() / "pods" / f"{NAMESPACE}_{victim}" / "prestop.log").read_text()
    assert f"waiting for 1 slot(s) to be released: {slot}" in log
    assert "all slots released after" in log
    # whenScaled: Retain — the volume (and with it the cache) waits for the builder to come back.
    claim = core.read_namespaced_persistent_volume_claim(f"state-{victim}", NAMESPACE)
    assert claim.status.phase == "Bound"
    assert [p.metadata.name for p in pool_pods(core)] == BUILDERS[:-1]


CHART_KINDS = [
    ("v1", "ServiceAccount"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "StatefulSet"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
]


def test_uninstall_removes_everything(release, core, api, resources):
    started = time.monotonic()
    done = helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "120s", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    coordination = client.CoordinationV1Api(api)

    def empty():
        return (
            not core.list_namespaced_pod(NAMESPACE).items
            and not core.list_namespaced_persistent_volume_claim(NAMESPACE).items
            and not coordination.list_namespaced_lease(NAMESPACE).items
        )

    wait_for(empty, 120, "pods, volume claims (retention whenDeleted: Delete) and slot leases to be gone")
    print(f"uninstall: no pods, claims or leases left {time.monotonic() - started:.1f}s after `helm uninstall` started")
    for api_version, kind in CHART_KINDS:
        left = (
            resources.get(api_version=api_version, kind=kind)
            .get(namespace=NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}")
            .items
        )
        assert not left, f"{kind} left behind: {[item.metadata.name for item in left]}"
    release_records = core.list_namespaced_secret(NAMESPACE, label_selector=f"owner=helm,name={RELEASE}").items
    assert not release_records
    listing = helm(
        "list",
        "--namespace",
        NAMESPACE,
        "--short",
        "--deployed",
        "--failed",
        "--pending",
        "--superseded",
        "--uninstalling",
        "--uninstalled",
    )
    assert listing.returncode == 0 and listing.stdout.strip() == ""
    # The local PVs are Retain: released, their data kept until an operator deletes them (the fixture does).
    phases = {
        pv.metadata.name: pv.status.phase
        for pv in core.list_persistent_volume().items
        if pv.metadata.name in release["pvs"]
    }
    assert set(phases.values()) == {"Released"}, phases
