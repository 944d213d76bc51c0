"""kube-apiserver restarted during a warm build: the build succeeds, and a build placed while the API
server is down waits for it and succeeds too.

The real kube-apiserver of the testbed is stopped (SIGTERM, as a rollout or a crash-restart does) and
started again after 8 s with the same flags by `testbed/fault apiserver-restart` — the API server is
away for as long as its stop, the 8 s and its start take (15–30 s here), over several durations of
the first build's 6 s lease. Build A is in a RUN step on its warm builder the whole time; build B
starts once the API server's process is gone, so its placement meets refused connections.

A must end with exit 0 and have held its slot all along (same holder, same transition count after
the restart, renewed again, released at the end). B must say once that the API is not answering and
once that it answers again, then take a slot and succeed. The testbed is shared: this runs under the
testbed lock, and `testbed/fault clear` brings the API server back in a `finally` should anything
in between fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import poolkit
import pytest
from test_control_plane_outage import recorded_apiserver_pid, running_with

from warmbuild.errors import ClusterError
from warmbuild.pool.leases import list_pool_leases

FAULT = Path(__file__).resolve().parents[2] / "testbed" / "fault"
DOWN_SECONDS = 8
LEASE_SECONDS = 6
RUN_SECONDS = 75  # the RUN step outlasts the stop, the 8 s and the start by a margin


def build_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GITLAB_", "INPUT_"))}
    env.pop("WARMBUILD_BUILDER", None)  # it would win over the pool
    env.pop("CI", None)
    return env


def app(directory: Path, run: str) -> Path:
    directory.mkdir()
    (directory / "Dockerfile").write_text(f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN {run}\n")
    return directory


def build_args(context: Path, key: str, workdir: Path, *extra: str) -> list[str]:
    return [
        "build",
        str(context),
        "--pool",
        poolkit.POOL,
        "--namespace",
        poolkit.NAMESPACE,
        "--kubeconfig",
        os.environ["WARMBUILD_CI_KUBECONFIG"],
        "--cache-key",
        key,
        "--state-file",
        str(workdir / f"state-{key}.json"),
        "--result-file",
        str(workdir / f"result-{key}.json"),
        *extra,
    ]


def pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_kube_apiserver_restart_during_a_warm_build_and_a_placement_fails_neither(tmp_path, admin, run_warmbuild):
    poolkit.wait_for(lambda: not poolkit.held_slots(admin), 60, "the pool's slots to be free before the test")
    marker = f"wb-restart-{uuid.uuid4().hex[:12]}"
    key_a, key_b = f"test-restart-a-{uuid.uuid4().hex[:8]}", f"test-restart-b-{uuid.uuid4().hex[:8]}"
    context_a = app(tmp_path / "a", f"echo {marker}-started && sleep {RUN_SECONDS} && echo {marker}-finished")
    context_b = app(tmp_path / "b", f"echo placed-during-an-outage-{uuid.uuid4().hex[:8]}")
    done: dict = {}

    def build(name: str, args: list[str]) -> None:
        done[name] = run_warmbuild(*args, env=build_env(), timeout=400, cwd=tmp_path)

    a = threading.Thread(
        target=build,
        args=("a", build_args(context_a, key_a, tmp_path, "--lease-seconds", str(LEASE_SECONDS))),
        daemon=True,
    )
    a.start()
    poolkit.wait_for(lambda: running_with(marker) or not a.is_alive(), 180, "build A's RUN step to start")
    assert a.is_alive(), done["a"].stdout + done["a"].stderr
    (slot,) = [
        lease
        for lease in list_pool_leases(admin, poolkit.NAMESPACE, poolkit.POOL).values()
        if lease.workload_key == key_a
    ]

    old_pid = recorded_apiserver_pid()
    restart = None
    b = threading.Thread(
        target=build, args=("b", build_args(context_b, key_b, tmp_path, "--max-wait", "150")), daemon=True
    )
    try:
        restart = subprocess.Popen(
            [str(FAULT), "apiserver-restart", str(DOWN_SECONDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        poolkit.wait_for(lambda: not pid_alive(old_pid), 30, "the old kube-apiserver to exit", interval=0.05)
        down_at = time.time()
        b.start()
        out, err = restart.communicate(timeout=240)
        assert restart.returncode == 0, err
        back_at = time.time()
        a_still_running = running_with(marker)
    finally:
        if restart is not None and restart.poll() is None:
            restart.kill()
            restart.wait()
        subprocess.run([str(FAULT), "clear"], capture_output=True, timeout=300)  # the shared API server is back
    assert recorded_apiserver_pid() != old_pid
    print(f"kube-apiserver away {back_at - down_at:.1f}s: {out.strip()}")
    if not a_still_running:
        a.join(120)
        run = done.get("a")
        pytest.fail("build A ended during the restart: " + (f"exit {run.returncode}\n{run.stderr}" if run else "?"))

    # From the recovery until A ends: its slot names A, with the same fencing token.
    seen: list[tuple[str, int, float | None]] = []
    while a.is_alive():
        try:
            lease = list_pool_leases(admin, poolkit.NAMESPACE, poolkit.POOL)[slot.name]
        except ClusterError as exc:
            seen.append((f"unreadable: {exc}", -1, None))
        else:
            seen.append((lease.holder, lease.transitions, lease.renewed_at.timestamp() if lease.renewed_at else None))
        time.sleep(0.25)
    a.join()
    b.join(240)
    assert not b.is_alive(), "build B is still placing or building"

    run_a, run_b = done["a"], done["b"]
    assert run_a.returncode == 0, run_a.stderr
    result_a = json.loads((tmp_path / f"result-{key_a}.json").read_text())
    assert result_a["status"] == "success" and result_a["placement"]["builder_name"] == slot.builder
    assert f"could not renew slot lease {slot.name}" in run_a.stderr, run_a.stderr
    assert f"renewed slot lease {slot.name} again after" in run_a.stderr, run_a.stderr
    readable = [(holder, transitions) for holder, transitions, _ in seen if transitions != -1]
    assert readable and set(readable) <= {(slot.holder, slot.transitions), ("", slot.transitions)}, seen
    assert any(h == slot.holder and r and r > back_at - 1 for h, _, r in seen), "renewed after the restart"

    assert run_b.returncode == 0, run_b.stderr
    result_b = json.loads((tmp_path / f"result-{key_b}.json").read_text())
    assert result_b["status"] == "success" and result_b["placement"]["path"] in ("warm", "spill")
    waiting = [line for line in run_b.stderr.splitlines() if "the Kubernetes API is not answering" in line]
    assert len(waiting) == 1 and "placement retries for up to" in waiting[0], run_b.stderr
    assert run_b.stderr.count("the Kubernetes API answers again after") == 1, run_b.stderr
    assert result_b["timings"]["queue_seconds"] >= 3, "B waited for the API server"

    assert poolkit.wait_for(lambda: not poolkit.held_slots(admin), 30, "every slot to be free afterwards")
    final = list_pool_leases(admin, poolkit.NAMESPACE, poolkit.POOL)[slot.name]
    assert (final.holder, final.transitions) == ("", slot.transitions), "released by A, never taken over"
