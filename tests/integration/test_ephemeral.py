"""Ephemeral fallback builders and the placement policy on the real testbed.

Real parts: the API server, scheduler, StatefulSet and garbage collector; the node emulator runs a
real buildkitd for every pod, ephemeral ones included; the registry holds images and caches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
import requests
from poolkit import held_slots, wait_for

from warmbuild.kube.client import KubeNotFound
from warmbuild.kube.names import EPHEMERAL_LABEL, pods_path
from warmbuild.pool.affinity import preference_order
from warmbuild.pool.gc import collect_garbage
from warmbuild.pool.history import append_record
from warmbuild.pool.leases import HolderInfo, list_pool_leases, release_slot, try_acquire_slot
from warmbuild.pool.membership import discover_builders
from warmbuild.pool.records import BuildRecord
from warmbuild.pool.workload import key_hash

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")


def ephemeral_pods(client) -> list[str]:
    items = client.request("GET", pods_path(NAMESPACE), query={"labelSelector": f"{EPHEMERAL_LABEL}=true"}).body[
        "items"
    ]
    return [p["metadata"]["name"] for p in items]


@pytest.fixture(autouse=True)
def clean_pool(ci, admin):
    collect_garbage(admin, NAMESPACE)  # what a killed earlier run may have left, as the gc CronJob would
    wait_for(lambda: len(discover_builders(ci, NAMESPACE, POOL)) == 3, 120, what="3 ready builders")
    wait_for(lambda: not held_slots(ci) and not ephemeral_pods(ci), 30, what="a quiet pool before the test")
    yield
    wait_for(lambda: not held_slots(ci), 30, what="every slot free after the test")
    wait_for(lambda: not ephemeral_pods(ci), 30, what="no ephemeral builder left after the test")


@contextmanager
def all_slots_held(client, holder_key: str = "someone-else"):
    """Hold every warm slot, as six other CI jobs would, with a known workload key."""
    grants = []
    try:
        for builder in discover_builders(client, NAMESPACE, POOL):
            for _ in range(builder.slots):
                grant = try_acquire_slot(
                    client,
                    NAMESPACE,
                    POOL,
                    builder,
                    HolderInfo(identity=f"other-{uuid.uuid4().hex[:6]}", workload_key=holder_key),
                    list_pool_leases(client, NAMESPACE, POOL),
                    duration=30,
                )
                assert grant is not None
                grants.append(grant)
        yield grants
    finally:
        for grant in grants:
            release_slot(client, NAMESPACE, grant.name, grant.holder)


def build_args(app, registry, tag, *extra):
    return ["build", str(app), "--pool", POOL, "--build-arg", f"REGISTRY={registry}", "--tag", tag, "--push", *extra]


def ci_env():
    return {"KUBECONFIG": os.environ["WARMBUILD_CI_KUBECONFIG"], "WARMBUILD_BUILDER": ""}


def test_with_every_warm_slot_held_builds_go_ephemeral_and_share_a_registry_cache(
    ci, tiny_app, registry, unique_repo, run_warmbuild, tmp_path
):
    results = []
    with all_slots_held(ci):
        for attempt in range(2):
            (tiny_app / "app.py").write_text(f'print("attempt {attempt} {uuid.uuid4().hex}")\n')
            result_file = tmp_path / f"r{attempt}.json"
            done = run_warmbuild(
                *build_args(
                    tiny_app,
                    registry,
                    f"{unique_repo}:eph",
                    "--max-wait",
                    "0",
                    "--result-file",
                    str(result_file),
                    "--state-file",
                    str(tmp_path / "s.json"),
                ),
                env=ci_env(),
            )
            assert done.returncode == 0, done.stderr
            results.append(json.loads(result_file.read_text()))
            assert not ephemeral_pods(ci)  # deleted as soon as the build ended
    first, second = results
    for result in results:
        assert result["placement"]["path"] == "ephemeral"
        assert "went ephemeral" in result["placement"]["reason"]
        assert result["timings"]["startup_seconds"] > 0
    host, _, repo = unique_repo.partition("/")
    cache = requests.get(
        f"http://{host}/v2/{repo}/manifests/buildcache", headers={"Accept": MANIFEST_TYPES}, timeout=10
    )
    assert cache.status_code == 200  # the first build exported its cache
    pip_first = next(s for s in first["steps"] if "RUN pip install" in s["name"])
    pip_second = next(s for s in second["steps"] if "RUN pip install" in s["name"])
    assert pip_first["cached"] is False  # a fresh builder and a fresh cache ref
    assert pip_second["cached"] is True  # imported from the registry cache on another fresh builder
    assert any(s["name"].startswith("importing cache manifest") for s in second["steps"])


def follow(stream) -> tuple[list[str], threading.Thread]:
    """The lines of `stream`, collected by a thread as they come (the list grows while the process
    runs), and that thread (joined, it has read to the end)."""
    lines: list[str] = []

    def read():
        for line in stream:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def seed_history(ci, key: str, path: str, seconds: float, count: int = 3):
    for _ in range(count):
        append_record(
            ci,
            NAMESPACE,
            POOL,
            BuildRecord(
                key_hash(key),
                time.time(),
                path,
                "seed",
                0.0,
                1.0 if path == "ephemeral" else 0.0,
                seconds,
                seconds,
                0.5,
                "success",
            ),
        )


def test_policy_waits_when_history_says_the_affine_slot_frees_soon(
    ci, tiny_app, registry, unique_repo, run_warmbuild, tmp_path
):
    ours, theirs = f"wait-{uuid.uuid4().hex}", f"quick-{uuid.uuid4().hex}"
    seed_history(ci, ours, "warm", 5)
    seed_history(ci, ours, "ephemeral", 400)
    seed_history(ci, theirs, "warm", 4)
    affine = preference_order(ours, [b.name for b in discover_builders(ci, NAMESPACE, POOL)])[0]
    with all_slots_held(ci, holder_key=theirs) as grants:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warmbuild.cli",
                *build_args(
                    tiny_app,
                    registry,
                    f"{unique_repo}:wait",
                    "--cache-key",
                    ours,
                    "--result-file",
                    str(tmp_path / "r.json"),
                    "--state-file",
                    str(tmp_path / "s.json"),
                ),
            ],
            env={**os.environ, **ci_env()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        stderr_lines, reader = follow(process.stderr)
        # Free the affine slot 2 s after the build says it waits: its queue time is at least that.
        wait_for(lambda: any("waiting up to" in line for line in stderr_lines), 60, what="the build to wait")
        time.sleep(2.0)
        for grant in grants:
            if grant.builder == affine:
                release_slot(ci, NAMESPACE, grant.name, grant.holder)
        process.wait(timeout=120)
        reader.join(timeout=10)
        stderr = "".join(stderr_lines)
    assert process.returncode == 0, stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["placement"]["path"] == "warm" and result["placement"]["builder_name"] == affine
    assert result["placement"]["reason"].startswith(f"affine builder {affine}")
    assert result["timings"]["queue_seconds"] >= 2.0
    assert f"affine builder {affine} busy for" in stderr and "waiting up to" in stderr


def test_policy_goes_ephemeral_when_history_says_the_affine_slot_stays_busy(
    ci, tiny_app, registry, unique_repo, run_warmbuild, tmp_path
):
    ours, theirs = f"eph-{uuid.uuid4().hex}", f"slow-{uuid.uuid4().hex}"
    seed_history(ci, ours, "warm", 5)
    seed_history(ci, ours, "ephemeral", 8)
    seed_history(ci, theirs, "warm", 900)
    with all_slots_held(ci, holder_key=theirs):
        done = run_warmbuild(
            *build_args(
                tiny_app,
                registry,
                f"{unique_repo}:eph2",
                "--cache-key",
                ours,
                "--max-wait",
                "600",
                "--result-file",
                str(tmp_path / "r.json"),
                "--state-file",
                str(tmp_path / "s.json"),
            ),
            env=ci_env(),
        )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["placement"]["path"] == "ephemeral"
    reason = result["placement"]["reason"]
    assert "busy for ~" in reason and "ephemeral expected" in reason and reason.endswith("went ephemeral")
    assert result["timings"]["queue_seconds"] < 5  # decided at once, no waiting


def test_an_unschedulable_builder_fails_within_the_timeout_naming_the_reason(
    ci, tiny_app, registry, unique_repo, run_warmbuild, tmp_path
):
    config = tmp_path / "ephemeral.yaml"
    config.write_text("nodeSelector: {warmbuild.dev/no-such-node: 'true'}\n")
    started = time.monotonic()
    done = run_warmbuild(
        *build_args(
            tiny_app,
            registry,
            f"{unique_repo}:never",
            "--untrusted",
            "--ephemeral-config",
            str(config),
            "--ephemeral-timeout",
            "6",
            "--result-file",
            str(tmp_path / "r.json"),
            "--state-file",
            str(tmp_path / "s.json"),
        ),
        env=ci_env(),
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 9, done.stderr
    assert elapsed < 20
    error = [line for line in done.stderr.splitlines() if line.startswith("warmbuild: error:")]
    assert len(error) == 1
    assert "was not ready after 6s" in error[0] and "FailedScheduling" in error[0] and "node" in error[0]
    assert not ephemeral_pods(ci)
    result = json.loads((tmp_path / "r.json").read_text())  # CI gets a result even without a solve
    assert result["status"] == "failed" and result["exit_code"] == 9
    assert result["placement"]["path"] == "none" and "FailedScheduling" in result["error"]


def buildctl_du_ids(address: str) -> set[str]:
    output = subprocess.run(
        [os.environ["WARMBUILD_BUILDCTL"], "--addr", address, "du", "--format", "{{json .}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    ids = set()
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{"):
            ids.add(json.loads(line)["id"])
        elif line.startswith("["):
            ids.update(r["id"] for r in json.loads(line))
    return ids


def test_an_untrusted_build_never_changes_a_warm_builders_cache(ci, tmp_path, registry, unique_repo, run_warmbuild):
    app = tmp_path / "untrusted"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"ARG REGISTRY\nFROM ${{REGISTRY}}/library/python:3.11-slim\nRUN echo {uuid.uuid4().hex} > /poison\n"
    )
    builders = discover_builders(ci, NAMESPACE, POOL)
    before = {b.name: buildctl_du_ids(b.address) for b in builders}
    done = run_warmbuild(
        *build_args(
            app,
            registry,
            f"{unique_repo}:untrusted",
            "--untrusted",
            "--result-file",
            str(tmp_path / "r.json"),
            "--state-file",
            str(tmp_path / "s.json"),
        ),
        env=ci_env(),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["placement"]["path"] == "ephemeral" and "untrusted" in result["placement"]["reason"]
    after = {b.name: buildctl_du_ids(b.address) for b in builders}
    assert after == before
    host, _, repo = unique_repo.partition("/")
    no_cache = requests.get(
        f"http://{host}/v2/{repo}/manifests/buildcache", headers={"Accept": MANIFEST_TYPES}, timeout=10
    )
    assert no_cache.status_code == 404  # import only: nothing exported
    tags = requests.get(f"http://{host}/v2/{repo}/tags/list", timeout=10).json()["tags"]
    assert tags == ["untrusted"]


SLOW_DOCKERFILE = "ARG REGISTRY\nFROM ${{REGISTRY}}/library/python:3.11-slim\nRUN echo {marker} && sleep 120\n"
PUSH_DOCKERFILE = (
    "ARG REGISTRY\nFROM ${{REGISTRY}}/library/python:3.11-slim\n"
    "RUN echo {marker} && head -c 150000000 /dev/urandom > /blob\n"
)


def start_build(app, registry, tag, tmp_path, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "warmbuild.cli",
            *build_args(
                app,
                registry,
                tag,
                "--untrusted",
                "--lease-seconds",
                "4",
                "--result-file",
                str(tmp_path / "r.json"),
                "--state-file",
                str(tmp_path / "s.json"),
                *extra,
            ),
        ],
        env={**os.environ, **ci_env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(process, marker: str, timeout: float) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"never saw {marker!r}; got: {''.join(lines[-15:])}")


@pytest.mark.parametrize(
    "phase, marker, signum, code",
    [
        ("startup", "starting an ephemeral builder", signal.SIGTERM, 143),
        ("build", "RUN echo", signal.SIGTERM, 143),
        ("push", "pushing layers", signal.SIGTERM, 143),
        ("build", "RUN echo", signal.SIGINT, 130),
    ],
)
def test_a_signal_in_any_phase_deletes_the_builder_and_frees_everything_within_5s(
    ci, tmp_path, registry, unique_repo, phase, marker, signum, code
):
    app = tmp_path / "app"
    app.mkdir()
    template = PUSH_DOCKERFILE if phase == "push" else SLOW_DOCKERFILE
    (app / "Dockerfile").write_text(template.format(marker=uuid.uuid4().hex))
    extra = []
    if phase == "startup":  # a pod that stays Pending keeps the build in its startup phase
        config = tmp_path / "pending.yaml"
        config.write_text("nodeSelector: {warmbuild.dev/no-such-node: 'true'}\n")
        extra = ["--ephemeral-config", str(config), "--ephemeral-timeout", "60"]
    process = start_build(app, registry, f"{unique_repo}:{phase}", tmp_path, *extra)
    try:
        read_until(process, marker, 180)
        pods = wait_for(lambda: ephemeral_pods(ci), 10, what="the ephemeral pod")
        process.send_signal(signum)
        sent = time.monotonic()
        process.wait(timeout=10)
        assert process.returncode == code, process.stderr.read()
        wait_for(lambda: not ephemeral_pods(ci), 5 - (time.monotonic() - sent), interval=0.1, what="the pod to be gone")
        assert time.monotonic() - sent <= 5
        for name in pods:
            with pytest.raises(KubeNotFound):
                ci.request("GET", pods_path(NAMESPACE, name))
        assert not held_slots(ci)
        assert not (tmp_path / "s.json").exists()
        result = json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else None
        if result is not None:
            assert result["status"] == "cancelled"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_gc_removes_the_builder_of_a_killed_ci_job(ci, tmp_path, registry, unique_repo, run_warmbuild):
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(SLOW_DOCKERFILE.format(marker=uuid.uuid4().hex))
    process = start_build(app, registry, f"{unique_repo}:orphan", tmp_path)
    try:
        read_until(process, "RUN echo", 120)
        orphan = wait_for(lambda: ephemeral_pods(ci), 10, what="the ephemeral pod")[0]
        process.send_signal(signal.SIGKILL)  # no cleanup at all, as when a runner dies
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert orphan in ephemeral_pods(ci)
    early = run_warmbuild("gc")
    assert early.returncode == 0 and orphan in ephemeral_pods(ci)  # its run lease has not expired yet

    def collected():
        done = run_warmbuild("gc")
        assert done.returncode == 0, done.stderr
        return f"deleted pod {orphan}: its run lease expired" in done.stderr

    wait_for(collected, 20, interval=1, what="gc to collect the orphan")
    wait_for(lambda: orphan not in ephemeral_pods(ci), 10, what="the orphan to be gone")
    again = run_warmbuild("gc")
    assert again.returncode == 0 and orphan not in again.stderr  # idempotent
