"""A warm build survives a 20 s API-server outage (issue: renewal survives a short outage).

The real kube-apiserver of the testbed is stopped (SIGSTOP: its socket still accepts connections,
nothing answers — a hung server, the harder case for timeouts) for 20 s, over three durations of
the build's 6 s lease, while a RUN step sleeps on the warm builder. The build must end with exit
0 and status success, and its slot must have been held by it all along: the same holder and the
same transition count on every read, renewed again after the outage, released at the end.

The testbed is shared: the outage is exactly 20 s, SIGCONT is sent in a `finally`, and a detached
watchdog sends it too should this process die in between. The PID is the one the testbed
recorded, checked against its recorded start time (as testbed/lib.sh `tb_recorded_pid` does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import poolkit
import pytest

from warmbuild.errors import ClusterError
from warmbuild.kube.client import connect
from warmbuild.pool.leases import list_pool_leases

OUTAGE_SECONDS = 20
LEASE_SECONDS = 6
RUN_SECONDS = 35  # the RUN step outlasts the outage by a margin


def recorded_apiserver_pid() -> int:
    """The kube-apiserver PID the testbed recorded, if that very process still runs (else fail)."""
    pidfile = Path(os.environ["WARMBUILD_TESTBED_DIR"]) / "pids" / "kube-apiserver.pid"
    pid_text, _, started = pidfile.read_text().strip().partition(" ")
    pid = int(pid_text)
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    assert started and fields[19] == started, f"PID {pid} is not the kube-apiserver the testbed started"
    assert b"kube-apiserver" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    return pid


def running_with(marker: str) -> bool:
    """A process whose command line holds the marker runs (buildkitd's containers share this process table)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        return True
            except OSError:
                continue
    return False


@pytest.fixture(scope="module")
def admin():
    if not os.environ.get("WARMBUILD_CI_KUBECONFIG") or not os.environ.get("WARMBUILD_TESTBED_DIR"):
        pytest.fail('the testbed\'s control plane is not up: eval "$(testbed/up)" exports its settings')
    return connect(os.environ["KUBECONFIG"])


def test_a_20s_api_server_outage_during_a_warm_build_does_not_fail_it(tmp_path, admin, run_warmbuild):
    poolkit.wait_for(lambda: not poolkit.held_slots(admin), 60, "the pool's slots to be free before the test")
    marker = f"wb-outage-{uuid.uuid4().hex[:12]}"
    key = f"test-outage-{uuid.uuid4().hex[:12]}"
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\n"
        f"RUN echo {marker}-started && sleep {RUN_SECONDS} && echo {marker}-finished\n"
    )
    result_file = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GITLAB_", "INPUT_"))}
    env.pop("WARMBUILD_BUILDER", None)  # it would win over the pool
    env.pop("CI", None)
    done: dict = {}

    def build():
        done["run"] = run_warmbuild(
            "build",
            str(app),
            "--pool",
            poolkit.POOL,
            "--namespace",
            poolkit.NAMESPACE,
            "--kubeconfig",
            os.environ["WARMBUILD_CI_KUBECONFIG"],
            "--lease-seconds",
            str(LEASE_SECONDS),
            "--cache-key",
            key,
            "--state-file",
            str(tmp_path / "state.json"),
            "--result-file",
            str(result_file),
            env=env,
            timeout=300,
            cwd=tmp_path,
        )

    builder = threading.Thread(target=build, daemon=True)
    builder.start()
    poolkit.wait_for(lambda: running_with(marker) or not builder.is_alive(), 180, "the RUN step to start")
    assert builder.is_alive(), done["run"].stdout + done["run"].stderr

    (slot,) = [
        lease
        for lease in list_pool_leases(admin, poolkit.NAMESPACE, poolkit.POOL).values()
        if lease.workload_key == key
    ]
    assert slot.holder and not slot.is_free(admin.server_now()) and slot.duration_seconds == LEASE_SECONDS

    pid = recorded_apiserver_pid()
    watchdog = subprocess.Popen(  # SIGCONT even if this process dies mid-outage
        ["sh", "-c", f"sleep {OUTAGE_SECONDS + 5}; kill -CONT {pid}"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at = time.time()
        time.sleep(OUTAGE_SECONDS)
        still_running = running_with(marker)
    finally:
        os.kill(pid, signal.SIGCONT)
        watchdog.kill()
        watchdog.wait()
    resumed_at = time.time()
    if not still_running:
        builder.join(120)
        run = done.get("run")
        pytest.fail(
            "the build was aborted during the outage: "
            + (f"exit {run.returncode}\n{run.stdout}{run.stderr}" if run else "it is still running")
        )
    assert resumed_at - stopped_at < OUTAGE_SECONDS + 1

    # From the recovery until the build ends: the slot names this build, with the same fencing token.
    seen: list[tuple[str, int, float | None]] = []
    while builder.is_alive():
        try:
            lease = list_pool_leases(admin, poolkit.NAMESPACE, poolkit.POOL)[slot.name]
        except ClusterError as exc:  # the API server may take a moment to answer again
            seen.append((f"unreadable: {exc}", -1, None))
        else:
            renewed = lease.renewed_at.timestamp() if lease.renewed_at else None
            seen.append((lease.holder, lease.transitions, renewed))
        time.sleep(0.2)
    builder.join()
    run = done["run"]
    output = run.stdout + run.stderr

    assert run.returncode == 0, output
    result = json.loads(result_file.read_text())
    assert result["status"] == "success" and result["placement"]["path"] in ("warm", "spill"), result
    assert result["placement"]["builder_name"] == slot.builder
    assert f"could not renew slot lease {slot.name}" in output, output  # one warning, then one line on recovery
    assert output.count(f"could not renew slot lease {slot.name}") == 1, output
    assert f"renewed slot lease {slot.name} again after" in output, output

    readable = [(holder, transitions, renewed) for holder, transitions, renewed in seen if transitions != -1]
    assert readable, seen
    assert {(holder, transitions) for holder, transitions, _ in readable} <= {
        (slot.holder, slot.transitions),
        ("", slot.transitions),  # released at the end, by this build
    }, seen
    assert any(holder == slot.holder and renewed and renewed > resumed_at - 1 for holder, _, renewed in readable), (
        "the lease was renewed after the outage"
    )
    final = list_pool_leases(admin, poolkit.NAMESPACE, poolkit.POOL)[slot.name]
    assert (final.holder, final.transitions) == ("", slot.transitions), "released by this build, never taken over"
    assert poolkit.held_slots(admin) == {}, "every slot is free afterwards"
    assert not (tmp_path / "state.json").exists()
    first_renewal = min(renewed for holder, _, renewed in readable if renewed and renewed > resumed_at - 1)
    print(f"outage {resumed_at - stopped_at:.1f}s; renewed {first_renewal - resumed_at:+.1f}s after SIGCONT")
    print("\n".join(line for line in output.splitlines() if "renew" in line))
