"""The testbed's builder pool: a real control plane, the node emulator, and a real buildkitd per pod.

Needs `eval "$(testbed/up)"` (KUBECONFIG, WARMBUILD_NAMESPACE, WARMBUILD_BUILDCTL, WARMBUILD_TESTBED_DIR).
"""

import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402
from poolkit import wait_for  # noqa: E402

NODE = "warmbuild-node-0"
STATEFULSET = "builders"
SELECTOR = "app.kubernetes.io/name=warmbuild-builder,warmbuild.dev/pool=default"
REPLICAS = 3
PORT = 1234

if not os.environ.get("KUBECONFIG") or not os.environ.get("WARMBUILD_POOL"):
    if os.environ.get("WARMBUILD_REQUIRE_TESTBED") == "1":
        raise RuntimeError('the testbed\'s control plane and pool are not up: eval "$(testbed/up)"')
    pytest.skip("the testbed's control plane and pool are not up", allow_module_level=True)


@pytest.fixture(scope="module")
def apps(api):
    return client.AppsV1Api(api)


@pytest.fixture(scope="module")
def namespace():
    return os.environ["WARMBUILD_NAMESPACE"]


# ------------------------------------------------------------------------------------- helpers


def is_ready(pod) -> bool:
    return (
        pod.metadata.deletion_timestamp is None
        and pod.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    )


def read_pod(core, namespace, name):
    try:
        return core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def ready_pod(core, namespace, name, not_uid=None):
    pod = read_pod(core, namespace, name)
    if pod is not None and is_ready(pod) and pod.metadata.uid != not_uid:
        return pod
    return None


def builder_pods(core, namespace):
    return core.list_namespaced_pod(namespace, label_selector=SELECTOR).items


def accepts(ip: str) -> bool:
    try:
        socket.create_connection((ip, PORT), timeout=1).close()
        return True
    except OSError:
        return False


def buildctl_workers(ip: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.environ["WARMBUILD_BUILDCTL"], "--addr", f"tcp://{ip}:{PORT}", "debug", "workers"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_buildkitd_answers(ip: str) -> None:
    done = buildctl_workers(ip)
    assert done.returncode == 0, done.stderr
    assert "ID" in done.stdout and "PLATFORMS" in done.stdout, done.stdout


def scale(apps, namespace, replicas: int) -> None:
    apps.patch_namespaced_stateful_set_scale(STATEFULSET, namespace, {"spec": {"replicas": replicas}})


def delete_and_wait_gone(core, namespace, name, timeout=90):
    try:
        core.delete_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
    wait_for(lambda: read_pod(core, namespace, name) is None, timeout, f"pod {name} to be gone")


def bare_pod(name: str, *, command=None, env=None, grace=30, deadline=None) -> dict:
    """A pod bound straight to the emulated node (no scheduler), not part of the pool."""
    container = {"name": "buildkitd", "image": "moby/buildkit:v0.34.2", "env": env or []}
    if command:
        container["lifecycle"] = {"preStop": {"exec": {"command": command}}}
    spec = {"nodeName": NODE, "terminationGracePeriodSeconds": grace, "containers": [container]}
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"warmbuild.dev/test": "pool"}},
        "spec": spec,
    }


@pytest.fixture
def bare_pods(core, namespace):
    """Create bare pods; whatever is left is deleted (and waited for) at the end."""
    names = []

    def create(body: dict):
        names.append(body["metadata"]["name"])
        return core.create_namespaced_pod(namespace, body)

    yield create
    for name in names:
        delete_and_wait_gone(core, namespace, name)


# --------------------------------------------------------------------------------------- tests


def test_builders_are_ready_on_distinct_loopback_addresses(core, apps, namespace):
    statefulset = apps.read_namespaced_stateful_set(STATEFULSET, namespace)
    assert statefulset.spec.pod_management_policy == "Parallel"
    pods = wait_for(
        lambda: (lambda ps: ps if len(ps) == REPLICAS and all(map(is_ready, ps)) else None)(
            builder_pods(core, namespace)
        ),
        60,
        f"{REPLICAS} Ready builders",
    )
    assert sorted(p.metadata.name for p in pods) == [f"{STATEFULSET}-{i}" for i in range(REPLICAS)]
    ips = [p.status.pod_ip for p in pods]
    assert len(set(ips)) == REPLICAS
    for pod in pods:
        assert ipaddress.ip_address(pod.status.pod_ip).is_loopback
        assert [i.ip for i in pod.status.pod_ips] == [pod.status.pod_ip]
        assert pod.status.host_ip == "127.0.0.1"
        assert pod.spec.node_name == NODE
        assert pod.metadata.annotations["warmbuild.dev/slots"] == "2"
        (container,) = pod.status.container_statuses
        assert container.ready and container.started and container.state.running.started_at
        assert_buildkitd_answers(pod.status.pod_ip)
    node = core.read_node(NODE)
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    assert not node.spec.taints


def test_scaling_up_adds_a_working_builder_and_scaling_down_stops_it(core, apps, namespace):
    extra = f"{STATEFULSET}-{REPLICAS}"
    try:
        scale(apps, namespace, REPLICAS + 1)
        started = time.monotonic()
        pod = wait_for(lambda: ready_pod(core, namespace, extra), 60, f"{extra} to be Ready")
        ready_after = time.monotonic() - started
        ip = pod.status.pod_ip
        others = {p.status.pod_ip for p in builder_pods(core, namespace) if p.metadata.name != extra}
        assert ip not in others
        assert_buildkitd_answers(ip)
        print(f"scale-up: {extra} Ready {ready_after:.1f}s after the replicas change")

        scale(apps, namespace, REPLICAS)
        wait_for(lambda: read_pod(core, namespace, extra) is None, 60, f"{extra} to be removed")
        wait_for(lambda: not accepts(ip), 10, f"{extra}'s buildkitd on {ip} to stop listening")
    finally:
        scale(apps, namespace, REPLICAS)
        wait_for(lambda: read_pod(core, namespace, extra) is None, 90, f"{extra} to be removed")
    assert len([p for p in builder_pods(core, namespace) if is_ready(p)]) == REPLICAS


def test_a_deleted_builder_is_recreated_and_ready_again(core, namespace):
    name = f"{STATEFULSET}-1"
    old = wait_for(lambda: ready_pod(core, namespace, name), 60, f"{name} to be Ready")
    core.delete_namespaced_pod(name, namespace)
    started = time.monotonic()
    new = wait_for(lambda: ready_pod(core, namespace, name, not_uid=old.metadata.uid), 90, f"a new {name} to be Ready")
    print(f"re-creation: new {name} Ready {time.monotonic() - started:.1f}s after the delete")
    assert new.status.container_statuses[0].restart_count == 0
    assert_buildkitd_answers(new.status.pod_ip)


PRESTOP_SCRIPT = textwrap.dedent(
    """
    # The preStop hook, run by the node emulator on the host. It records what it saw.
    import json, os, socket, sys
    from kubernetes import client, config

    def listening(ip):
        try:
            socket.create_connection((ip, 1234), timeout=1).close()
            return True
        except OSError:
            return False

    api = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    review = client.AuthenticationV1Api(api).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    seen = {name: os.environ.get(name) for name in ("POD_NAME", "POD_NAMESPACE", "POD_IP", "NODE_NAME", "GREETING")}
    seen["buildkitd_listening"] = listening(os.environ["POD_IP"])
    seen["user"] = review.status.user_info.username
    seen["argv"] = sys.argv[1:]
    with open(os.environ["RESULT"], "w") as out:
        json.dump(seen, out)
    """
)


def test_prestop_runs_on_deletion_before_buildkitd_is_stopped(core, namespace, bare_pods, tmp_path):
    script = tmp_path / "prestop.py"
    script.write_text(PRESTOP_SCRIPT)
    result = tmp_path / "prestop.json"
    name = f"prestop-{uuid.uuid4().hex[:6]}"
    env = [
        {"name": "GREETING", "value": "hello"},
        {"name": "RESULT", "value": str(result)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    bare_pods(bare_pod(name, command=[sys.executable, str(script), "$(GREETING)-$(POD_NAME)"], env=env, grace=30))
    pod = wait_for(lambda: ready_pod(core, namespace, name), 60, f"{name} to be Ready")
    ip = pod.status.pod_ip
    assert_buildkitd_answers(ip)

    core.delete_namespaced_pod(name, namespace)
    wait_for(lambda: read_pod(core, namespace, name) is None, 60, f"{name} to be finalized")
    assert not accepts(ip)
    seen = json.loads(result.read_text())
    assert seen == {
        "POD_NAME": name,
        "POD_NAMESPACE": namespace,
        "POD_IP": ip,
        "NODE_NAME": NODE,
        "GREETING": "hello",
        "buildkitd_listening": True,  # preStop ran while buildkitd still served
        "user": f"system:serviceaccount:{namespace}:default",  # with the pod's service account
        "argv": [f"hello-{name}"],
    }


def test_an_exited_buildkitd_is_restarted(core, namespace, bare_pods):
    name = f"restart-{uuid.uuid4().hex[:6]}"
    bare_pods(bare_pod(name))
    pod = wait_for(lambda: ready_pod(core, namespace, name), 60, f"{name} to be Ready")
    pid_file = Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "node" / "pods" / f"{namespace}_{name}" / "buildkitd.pid"
    os.kill(int(pid_file.read_text()), 9)  # the pod's own buildkitd, started for this test

    # Every status the emulator writes from here on, in order: not Ready first, then Ready again.
    seen = []
    for event in watch.Watch().stream(
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={name}",
        resource_version=pod.metadata.resource_version,
        timeout_seconds=60,
    ):
        seen.append(event["object"])
        if is_ready(seen[-1]) and seen[-1].status.container_statuses[0].restart_count == 1:
            break
    restarted = seen[-1]
    assert is_ready(restarted), "the pod did not become Ready again within 60 s"
    assert not is_ready(seen[0]) and seen[0].status.container_statuses[0].ready is False
    last = restarted.status.container_statuses[0].last_state.terminated
    assert last is not None and last.exit_code == 137  # 128 + SIGKILL, as the kubelet reports it
    assert restarted.status.pod_ip == pod.status.pod_ip
    assert_buildkitd_answers(restarted.status.pod_ip)


def test_active_deadline_fails_the_pod_and_stops_buildkitd(core, namespace, bare_pods):
    name = f"deadline-{uuid.uuid4().hex[:6]}"
    bare_pods(bare_pod(name, deadline=5))
    pod = wait_for(lambda: ready_pod(core, namespace, name), 60, f"{name} to be Ready")
    ip = pod.status.pod_ip
    failed = wait_for(
        lambda: (lambda p: p if p.status.phase == "Failed" else None)(core.read_namespaced_pod(name, namespace)),
        30,
        f"{name} to fail",
    )
    assert failed.status.reason == "DeadlineExceeded"
    assert not accepts(ip)
