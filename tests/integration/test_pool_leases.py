"""Slot leases on the real control plane: races, crashes, fencing, pool changes, RBAC, end to end.

Needs the testbed's control plane, node emulator and builder StatefulSet (eval "$(testbed/up)").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from poolkit import assert_served_without_overlap, held_slots, race_for_slots, take_over, wait_for

from warmbuild.errors import NoSlotAvailable
from warmbuild.kube.client import connect
from warmbuild.pool.leases import HolderInfo, LeaseKeeper, leases_path, list_pool_leases, release_slot, try_acquire_slot
from warmbuild.pool.membership import discover_builders
from warmbuild.pool.placement import PlacementRequest, acquire_build_slot
from warmbuild.pool.workload import explicit_key

POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
STATEFULSET = "builders"


@pytest.fixture(scope="module")
def ci_kubeconfig():
    return os.environ["WARMBUILD_CI_KUBECONFIG"]


@pytest.fixture(autouse=True)
def pool_is_idle(admin):
    wait_for(lambda: len(discover_builders(admin, NAMESPACE, POOL)) == 3, 120, what="3 ready builders")
    wait_for(lambda: not held_slots(admin), 30, what="all slots free before the test")
    yield
    # Every test must leave every slot free again.
    wait_for(lambda: not held_slots(admin), 30, what="all slots free after the test")


def scale(admin, replicas: int):
    admin.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{STATEFULSET}",
        body={"spec": {"replicas": replicas}},
        content_type="application/merge-patch+json",
    )


def test_forty_racing_acquirers_never_exceed_six_holders_and_all_get_served(ci_kubeconfig, admin):
    def acquire_hold_release(index: int):
        client = connect(ci_kubeconfig)
        request = PlacementRequest(
            namespace=NAMESPACE,
            pool=POOL,
            key=explicit_key(f"race-{index % 12}"),
            holder=HolderInfo(
                identity=f"race-{index}-{uuid.uuid4().hex[:6]}", run_url=f"https://ci.example/run/{index}"
            ),
            max_wait_seconds=3,
            lease_seconds=15,
        )
        grant = None
        while grant is None:
            try:
                grant = acquire_build_slot(client, request)
            except NoSlotAvailable:
                time.sleep(0.2)  # all six busy for 3 s: try again, as a retrying CI job would
        start = time.monotonic()
        time.sleep(0.3)
        end = time.monotonic()
        assert release_slot(client, NAMESPACE, grant.lease.name, grant.lease.holder)
        return grant.lease.name, start, end, grant.lease.fencing_token

    holders_seen_max, violations, intervals, errors = race_for_slots(acquire_hold_release, 40, connect(ci_kubeconfig))
    assert not errors, errors[:3]
    assert not violations, violations[:3]
    assert 1 <= holders_seen_max <= 6
    assert_served_without_overlap(intervals, 40)  # every acquirer was served, one holder per slot at a time
    assert not held_slots(admin)


HOLD_ALL_SLOTS = """
import sys, time
from warmbuild.kube.client import connect
from warmbuild.pool.leases import HolderInfo, LeaseKeeper, list_pool_leases, try_acquire_slot
from warmbuild.pool.membership import discover_builders
namespace, pool, builder_name, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = connect()
builder = next(b for b in discover_builders(client, namespace, pool) if b.name == builder_name)
keepers = []
for i in range(builder.slots):
    held = try_acquire_slot(client, namespace, pool, builder, HolderInfo(identity=f"doomed-{i}"),
                            list_pool_leases(client, namespace, pool), seconds)
    assert held is not None
    keepers.append(LeaseKeeper(client, held, on_lost=print).start())
print("holding", flush=True)
time.sleep(600)
"""


def test_a_holder_killed_with_sigkill_frees_its_slot_within_duration_plus_two_seconds(ci_kubeconfig):
    client = connect(ci_kubeconfig)
    builder = discover_builders(client, NAMESPACE, POOL)[0]
    lease_seconds = 6
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_ALL_SLOTS, NAMESPACE, POOL, builder.name, str(lease_seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "KUBECONFIG": ci_kubeconfig},
    )
    try:
        assert child.stdout.readline().strip() == "holding"
        time.sleep(lease_seconds)  # it renews meanwhile: the slots must still be held
        assert (
            try_acquire_slot(
                client,
                NAMESPACE,
                POOL,
                builder,
                HolderInfo(identity="too-early"),
                list_pool_leases(client, NAMESPACE, POOL),
            )
            is None
        )
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed = time.monotonic()

        def take_slot():
            return try_acquire_slot(
                client,
                NAMESPACE,
                POOL,
                builder,
                HolderInfo(identity="successor"),
                list_pool_leases(client, NAMESPACE, POOL),
            )

        held = wait_for(take_slot, lease_seconds + 5, interval=0.1, what="the dead holder's slot")
        freed_after = time.monotonic() - killed
        assert freed_after <= lease_seconds + 2, f"slot free only after {freed_after:.1f}s"
        release_slot(client, NAMESPACE, held.name, held.holder)
        # The other slot of that builder expires the same way; wait so the next test starts clean.
        wait_for(lambda: not held_slots(client), lease_seconds + 5, what="the second slot to expire")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_holder_whose_lease_is_taken_over_learns_it_on_the_next_renewal(ci_kubeconfig, admin):
    client = connect(ci_kubeconfig)
    builder = discover_builders(client, NAMESPACE, POOL)[0]
    held = try_acquire_slot(
        client,
        NAMESPACE,
        POOL,
        builder,
        HolderInfo(identity="victim"),
        list_pool_leases(client, NAMESPACE, POOL),
        duration=3,
    )
    assert held is not None
    lost = threading.Event()
    reasons = []
    keeper = LeaseKeeper(client, held, on_lost=lambda reason: (reasons.append(reason), lost.set())).start()
    try:
        take_over(admin, held.name)
        assert lost.wait(5), "the keeper did not notice the takeover"
        assert reasons == [f"slot lease {held.name} is now held by usurper"]
    finally:
        keeper.stop()
        release_slot(admin, NAMESPACE, held.name, "usurper")


def test_lease_times_are_microtime_with_six_fractional_digits(ci_kubeconfig):
    client = connect(ci_kubeconfig)
    builder = discover_builders(client, NAMESPACE, POOL)[0]
    held = try_acquire_slot(
        client, NAMESPACE, POOL, builder, HolderInfo(identity="format-check"), list_pool_leases(client, NAMESPACE, POOL)
    )
    try:
        spec = client.request("GET", leases_path(NAMESPACE, held.name)).body["spec"]
        for field in ("acquireTime", "renewTime"):
            value = spec[field]
            assert value.endswith("Z") and len(value.split(".")[1]) == 7, value  # 6 digits + Z
        # Judged against the server's clock: the renew time is within a few seconds of its Date.
        renewed = datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00"))
        assert abs((client.server_now() - renewed).total_seconds()) < 5
    finally:
        release_slot(client, NAMESPACE, held.name, held.holder)


def test_deleting_a_builder_pod_garbage_collects_its_leases_and_routes_nothing_to_it(ci_kubeconfig, admin):
    client = connect(ci_kubeconfig)
    builders = discover_builders(client, NAMESPACE, POOL)
    victim = builders[-1]
    held = try_acquire_slot(
        client, NAMESPACE, POOL, victim, HolderInfo(identity="before-delete"), list_pool_leases(client, NAMESPACE, POOL)
    )
    release_slot(client, NAMESPACE, held.name, held.holder)
    assert held.name in list_pool_leases(client, NAMESPACE, POOL)

    admin.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{victim.name}")
    # From the moment it terminates, the pool no longer offers it.
    wait_for(
        lambda: all(b.uid != victim.uid for b in discover_builders(client, NAMESPACE, POOL)),
        30,
        what="the deleted builder to leave the pool",
    )

    def victim_leases_gone():
        leases = list_pool_leases(client, NAMESPACE, POOL)
        return all(lease.owner_uid != victim.uid for lease in leases.values())

    wait_for(victim_leases_gone, 60, interval=0.5, what="the garbage collector to remove the victim's leases")
    request = PlacementRequest(
        NAMESPACE, POOL, explicit_key("after-delete"), HolderInfo(identity="after-delete"), max_wait_seconds=0
    )
    grant = acquire_build_slot(client, request)
    try:
        assert grant.builder.uid != victim.uid
    finally:
        release_slot(client, NAMESPACE, grant.lease.name, grant.lease.holder)
    wait_for(
        lambda: len(discover_builders(client, NAMESPACE, POOL)) == 3, 120, what="the StatefulSet to replace the pod"
    )


def test_scaling_to_four_builders_is_picked_up_without_a_restart(ci_kubeconfig, admin):
    client = connect(ci_kubeconfig)
    try:
        scale(admin, 4)
        builders = wait_for(
            lambda: (lambda found: found if len(found) == 4 else None)(discover_builders(client, NAMESPACE, POOL)),
            120,
            what="a fourth ready builder",
        )
        newcomer = next(b for b in builders if b.name.endswith("-3"))
        # Some workload key now prefers the newcomer, and placement sends it there.
        from warmbuild.pool.affinity import preference_order

        key = next(
            f"scale-{i}"
            for i in range(1000)
            if preference_order(f"scale-{i}", [b.name for b in builders])[0] == newcomer.name
        )
        grant = acquire_build_slot(
            client,
            PlacementRequest(NAMESPACE, POOL, explicit_key(key), HolderInfo(identity="scale"), max_wait_seconds=0),
        )
        try:
            assert grant.builder.name == newcomer.name and grant.affine
        finally:
            release_slot(client, NAMESPACE, grant.lease.name, grant.lease.holder)
    finally:
        scale(admin, 3)
        wait_for(lambda: len(discover_builders(client, NAMESPACE, POOL)) == 3, 120, what="scale back to 3")


def _token_for(admin, service_account: str) -> str:
    response = admin.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{service_account}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    return response.body["status"]["token"]


def test_a_missing_permission_is_one_line_naming_it(admin, tiny_app, registry, run_warmbuild, tmp_path):
    name = "warmbuild-no-leases"
    admin.request(
        "PATCH",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{name}?fieldManager=tests&force=true",
        body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}},
        content_type="application/apply-patch+yaml",
    )
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "update", "patch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
    }
    for kind, body in (("roles", role), ("rolebindings", binding)):
        admin.request(
            "PATCH",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/{kind}/{name}?fieldManager=tests&force=true",
            body=body,
            content_type="application/apply-patch+yaml",
        )
    ca_file = str(Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "pki" / "ca.crt")
    done = run_warmbuild(
        "build",
        str(tiny_app),
        "--pool",
        POOL,
        "--build-arg",
        f"REGISTRY={registry}",
        "--max-wait",
        "0",
        "--result-file",
        str(tmp_path / "r.json"),
        "--state-file",
        str(tmp_path / "state.json"),
        env={
            "KUBECONFIG": "",
            "WARMBUILD_BUILDER": "",
            "WARMBUILD_K8S_SERVER": admin.host,
            "WARMBUILD_K8S_TOKEN": _token_for(admin, name),
            "WARMBUILD_K8S_CA_FILE": ca_file,
        },
    )
    assert done.returncode == 6, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "missing permission: " in lines[0] and "leases.coordination.k8s.io in namespace warmbuild" in lines[0]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["status"] == "failed" and result["exit_code"] == 6 and "missing permission" in result["error"]
    assert "create" in lines[0] or "update" in lines[0]


def test_build_through_the_pool_lands_on_the_affine_builder_and_reuses_its_cache(
    ci_kubeconfig, tiny_app, registry, unique_repo, run_warmbuild, tmp_path, admin
):
    results = []
    for attempt in range(2):
        if attempt == 1:
            (tiny_app / "app.py").write_text(f'print("edited {uuid.uuid4().hex}")\n')
        result_file = tmp_path / f"result-{attempt}.json"
        done = run_warmbuild(
            "build",
            str(tiny_app),
            "--pool",
            POOL,
            "--cache-key",
            f"e2e-{unique_repo}",
            "--build-arg",
            f"REGISTRY={registry}",
            "--tag",
            f"{unique_repo}:pool",
            "--push",
            "--result-file",
            str(result_file),
            "--state-file",
            str(tmp_path / "state.json"),
            env={"KUBECONFIG": ci_kubeconfig, "WARMBUILD_BUILDER": ""},
        )
        assert done.returncode == 0, done.stderr
        results.append(json.loads(result_file.read_text()))
    first, second = results
    assert first["placement"]["path"] == "warm" and first["placement"]["affine"] is True
    assert second["placement"]["builder_name"] == first["placement"]["builder_name"]
    pip_step = next(s for s in second["steps"] if "RUN pip install" in s["name"])
    assert pip_step["cached"] is True
    assert second["cache"]["cached_steps"] > 0
    assert not (tmp_path / "state.json").exists()  # released and cleaned up
    assert not held_slots(admin)


def registry_layers(reference: str) -> list[tuple[str, str]]:
    """(media type, digest) of each layer of an image or a registry cache, following an index."""
    import requests

    host, _, rest = reference.partition("/")
    repo, _, tag = rest.rpartition(":")
    accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    document = requests.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}, timeout=10).json()
    if "manifests" in document and document.get("mediaType", "").endswith("index.v1+json") and "layers" not in document:
        manifests = [m for m in document["manifests"] if "manifest" in m.get("mediaType", "")]
        if manifests:  # an image index: the image's own manifest (a cache index lists layers directly)
            document = requests.get(
                f"http://{host}/v2/{repo}/manifests/{manifests[0]['digest']}", headers={"Accept": accept}, timeout=10
            ).json()
    return [
        (layer["mediaType"], layer["digest"]) for layer in document.get("layers") or document.get("manifests") or []
    ]


def test_zstd_compresses_the_layers_a_build_makes_in_the_image_and_in_the_registry_cache(
    ci_kubeconfig, tiny_app, registry, unique_repo, run_warmbuild, tmp_path
):
    (tiny_app / "app.py").write_text(f'print("zstd {uuid.uuid4().hex}")\n')
    done = run_warmbuild(
        "build",
        str(tiny_app),
        "--pool",
        POOL,
        "--cache-key",
        f"zstd-{unique_repo}",
        "--build-arg",
        f"REGISTRY={registry}",
        "--tag",
        f"{unique_repo}:zstd",
        "--push",
        "--compression",
        "zstd",
        "--result-file",
        str(tmp_path / "r.json"),
        "--state-file",
        str(tmp_path / "state.json"),
        env={"KUBECONFIG": ci_kubeconfig, "WARMBUILD_BUILDER": ""},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["placement"]["path"] == "warm"
    image = registry_layers(f"{unique_repo}:zstd")
    # The code layer is new (app.py is unique); layers reused from the base image or the builder's
    # cache keep the compression their blob already has.
    code_layer_type, code_layer_digest = image[-1]
    assert code_layer_type.endswith("tar+zstd"), image
    cache = registry_layers(f"{unique_repo}:buildcache")
    assert (code_layer_type, code_layer_digest) in cache, cache  # the same blob, not a second compression


def test_pool_status_shows_holders_and_their_run(ci_kubeconfig, run_warmbuild):
    client = connect(ci_kubeconfig)
    grant = acquire_build_slot(
        client,
        PlacementRequest(
            NAMESPACE,
            POOL,
            explicit_key("status-check"),
            HolderInfo(identity="status-holder", run_url="https://ci.example/run/42"),
            0,
        ),
    )
    try:
        done = run_warmbuild("pool", "status", "--pool", POOL, "--json", env={"KUBECONFIG": ci_kubeconfig})
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert len(status["builders"]) == 3
        slots = [s for b in status["builders"] for s in b["slots"]]
        mine = [s for s in slots if s["holder"] == "status-holder"]
        assert len(mine) == 1 and mine[0]["run_url"] == "https://ci.example/run/42"
        assert mine[0]["lease"] == grant.lease.name and mine[0]["held_seconds"] is not None
        table = run_warmbuild("pool", "status", "--pool", POOL, env={"KUBECONFIG": ci_kubeconfig})
        assert "status-holder" in table.stdout and "https://ci.example/run/42" in table.stdout
        in_use = re.search(r"3 builders, (\d)/6 slots in use", table.stdout)
        assert in_use and int(in_use.group(1)) >= 1
    finally:
        release_slot(client, NAMESPACE, grant.lease.name, grant.lease.holder)


def test_release_from_another_process_reads_the_state_file(ci_kubeconfig, run_warmbuild, tmp_path):
    client = connect(ci_kubeconfig)
    grant = acquire_build_slot(
        client, PlacementRequest(NAMESPACE, POOL, explicit_key("release-check"), HolderInfo(identity="post-step"), 0)
    )
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps({"namespace": NAMESPACE, "lease": grant.lease.name, "holder": "post-step"}))
    done = run_warmbuild("release", "--state-file", str(state_file), env={"KUBECONFIG": ci_kubeconfig})
    assert done.returncode == 0, done.stderr
    assert f"released slot {grant.lease.name}" in done.stderr
    assert grant.lease.name not in held_slots(client)
    again = run_warmbuild("release", "--state-file", str(state_file), env={"KUBECONFIG": ci_kubeconfig})
    assert again.returncode == 0 and "nothing to release" in again.stderr
