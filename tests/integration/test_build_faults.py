"""Faults during builds on the real testbed: builds survive what a real cluster does to them.

- buildkitd SIGKILLed in the middle of a RUN step → the build runs again on another builder and
  succeeds, `attempts: 2`, the dead builder marked unhealthy and every slot given back;
- buildkitd SIGKILLed while the image is being pushed → one clear failure (exit 3), no tag in the
  registry, no second push from another builder;
- a builder whose disk is full (its state directory on a small, filled tmpfs) → the build fails
  there for an infrastructure reason, runs again elsewhere, the builder is marked, `pool status`
  shows it and the next build of the same workload skips it;
- the registry cut off and answering 503 during a push → the push is solved again on the same
  builder with backoff and the tag points at the digest the build reported.

The node emulator restarts a killed buildkitd as a kubelet restarts a container (the pod is not
Ready meanwhile); each test waits for the pool to be whole again and removes the marks it caused,
so the tests after it find three healthy builders.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import poolkit
import pytest
import requests
from registry_proxy import ThrottlingProxy

from warmbuild.kube.client import connect
from warmbuild.pool.affinity import preference_order
from warmbuild.pool.health import clear_unhealthy
from warmbuild.pool.leases import list_pool_leases
from warmbuild.pool.membership import discover_builders, list_pool_pods
from warmbuild.pool.workload import derive_workload_key

POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
NODE_PODS = Path(os.environ.get("WARMBUILD_TESTBED_DIR", "/var/tmp/warmbuild-testbed")) / "node" / "pods"
wait_for = functools.partial(poolkit.wait_for, interval=0.2)
SLOT_LINE = re.compile(r"warmbuild: slot \S+ on (\S+) \(")


# --- helpers -----------------------------------------------------------------------------------


class Warmbuild:
    """`warmbuild build` as a separate process, as a CI job runs it; its output collected as it comes."""

    def __init__(self, args: list[str], cwd: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GITLAB_", "INPUT_"))}
        env.pop("CI", None)
        env.pop("WARMBUILD_BUILDER", None)  # it would win over the pool
        self.process = subprocess.Popen(
            [sys.executable, "-m", "warmbuild.cli", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def builders(self) -> list[str]:
        """The builders it was granted, in order (from its 'slot … on BUILDER' lines)."""
        return [m.group(1) for line in list(self.lines) if (m := SLOT_LINE.search(line))]

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"warmbuild did not end within {timeout:.0f}s:\n{self.output}")


def pool_args(app: Path, tmp_path: Path, key: str, *extra: str) -> list[str]:
    return [
        "build",
        str(app),
        "--pool",
        POOL,
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        os.environ["WARMBUILD_CI_KUBECONFIG"],
        "--cache-key",
        key,
        "--max-wait",
        "30",
        "--state-file",
        str(tmp_path / "state.json"),
        "--result-file",
        str(tmp_path / "result.json"),
        *extra,
    ]


def buildkitd_pid(builder: str) -> int:
    """The PID of the builder pod's buildkitd, as the node emulator (the testbed's kubelet) recorded it."""
    return int((NODE_PODS / f"{NAMESPACE}_{builder}" / "buildkitd.pid").read_text())


def kill_buildkitd(builder: str) -> int:
    pid = buildkitd_pid(builder)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, f"buildkitd {pid} to die")
    return pid


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def ready_again(admin, builder: str, old_pid: int) -> bool:
    """The emulator started a new buildkitd for the pod and reported it Ready."""
    try:
        if buildkitd_pid(builder) == old_pid:
            return False
    except (OSError, ValueError):
        return False
    return any(p.name == builder and p.usable for p in list_pool_pods(admin, NAMESPACE, POOL))


def affine_builder(admin, key: str) -> str:
    builders = discover_builders(admin, NAMESPACE, POOL)
    return preference_order(
        derive_workload_key("", "Dockerfile", explicit=key).value, {b.name: b.slots for b in builders}
    )[0]


def held_by_pid(admin, pid: int) -> list[str]:
    prefix = f"{os.uname().nodename}/{pid}/"
    return [name for name, lease in list_pool_leases(admin, NAMESPACE, POOL).items() if lease.holder.startswith(prefix)]


def pool_status(tmp_path: Path) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "warmbuild.cli",
            "pool",
            "status",
            "--pool",
            POOL,
            "--namespace",
            NAMESPACE,
            "--kubeconfig",
            os.environ["WARMBUILD_CI_KUBECONFIG"],
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return {b["name"]: b for b in json.loads(done.stdout)["builders"]}


def manifest_status(reference: str) -> int:
    host, _, rest = reference.partition("/")
    repo, _, tag = rest.rpartition(":")
    return requests.head(f"http://{host}/v2/{repo}/manifests/{tag}", timeout=10).status_code


@pytest.fixture(scope="module")
def admin():
    if not os.environ.get("KUBECONFIG") or not os.environ.get("WARMBUILD_CI_KUBECONFIG"):
        pytest.fail('the testbed\'s control plane is not up: eval "$(testbed/up)" exports KUBECONFIG')
    return connect(os.environ["KUBECONFIG"])


@pytest.fixture(autouse=True)
def whole_pool_after(admin):
    """After each test: every builder Ready again and no unhealthy mark left for the next tests."""
    expected = len(list_pool_pods(admin, NAMESPACE, POOL))
    yield
    wait_for(
        lambda: len(discover_builders(admin, NAMESPACE, POOL)) == expected,
        120,
        "every builder of the pool to be Ready again",
    )
    for builder in discover_builders(admin, NAMESPACE, POOL):
        clear_unhealthy(admin, NAMESPACE, builder)


def sleeping_app(tmp_path: Path, seconds: int) -> tuple[Path, str]:
    marker = f"wb-fault-{uuid.uuid4().hex[:12]}"
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN echo {marker}-started && sleep {seconds} && echo {marker}-done\n"
    )
    return app, marker


# --- a builder dies ----------------------------------------------------------------------------


def test_buildkitd_killed_mid_build_the_build_succeeds_on_another_builder(
    tmp_path, admin, unique_repo, registry_manifest
):
    app, marker = sleeping_app(tmp_path, 15)
    tag = f"{unique_repo}:1"
    run = Warmbuild(pool_args(app, tmp_path, f"faults-{marker}", "--tag", tag, "--push"), tmp_path)
    wait_for(lambda: f"{marker}-started" in run.output, 120, f"the RUN step to start\n{run.output}")
    (first,) = run.builders()
    old_pid = kill_buildkitd(first)

    code = run.wait(timeout=300)
    assert code == 0, run.output
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "success" and result["attempts"] == 2, run.output
    lost, built = result["attempt_history"]
    assert lost["builder_name"] == first and lost["outcome"] == "lost" and lost["cause"] == "connection lost"
    assert lost["marked_unhealthy"] is True
    assert built["builder_name"] != first and built["outcome"] == "success"
    assert result["placement"]["builder_name"] == built["builder_name"]
    assert f"attempt 1 lost its builder {first} (connection lost) before anything was pushed" in run.output
    # What was pushed is what the build reported, and no slot is left held.
    assert result["image"]["pushed"] is True and registry_manifest(tag)[0] == result["image"]["digest"]
    assert held_by_pid(admin, run.process.pid) == []
    assert not (tmp_path / "state.json").exists()
    # The dead builder is out of the rotation, visibly, until its cool-down passes.
    status = pool_status(tmp_path)
    assert status[first]["unhealthy"] == "connection lost", status[first]
    wait_for(lambda: ready_again(admin, first, old_pid), 90, f"{first}'s buildkitd to be restarted")


def test_buildkitd_killed_during_the_push_is_one_clear_failure_and_no_tag(tmp_path, admin, registry):
    try:
        proxy = ThrottlingProxy(bytes_per_second=1_000_000)
    except OSError as exc:
        pytest.fail(f"127.0.0.1:5001 is taken ({exc}): is another test's registry proxy still running?")
    try:
        app = tmp_path / "app"
        app.mkdir()
        blob = uuid.uuid4().hex
        (app / "Dockerfile").write_text(
            f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN head -c 20000000 /dev/urandom > /blob-{blob}\n"
        )
        repo = f"warmbuild-tests/push-kill-{blob[:10]}"
        run = Warmbuild(
            pool_args(app, tmp_path, f"faults-{blob}", "--tag", f"127.0.0.1:5001/{repo}:x", "--push"), tmp_path
        )
        assert proxy.upload_started.wait(180), run.output
        (builder,) = run.builders()
        old_pid = kill_buildkitd(builder)
        code = run.wait(timeout=120)
    finally:
        proxy.close()
    assert code == 3, run.output
    last = run.lines[-1]
    assert last.startswith("warmbuild: error: ") and "after the image push had started, so it is not retried" in last
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["exit_code"] == 3 and result["image"]["pushed"] is False and result["image"]["digest"] is None
    assert result["attempts"] == 1 and result["attempt_history"][0]["outcome"] == "lost"
    assert run.builders() == [builder], "never placed a second time"
    assert manifest_status(f"{registry}/{repo}:x") == 404, "a push cut short must not leave the tag behind"
    assert held_by_pid(admin, run.process.pid) == []
    wait_for(lambda: ready_again(admin, builder, old_pid), 90, f"{builder}'s buildkitd to be restarted")


# --- a builder's disk is full --------------------------------------------------------------------


def mount_small_filesystem(root: Path, megabytes: int) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0711", "tmpfs", str(root)], check=True)


def unmount(root: Path) -> None:
    # buildkitd may leave overlay mounts below its root when killed: lazily, all of them
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    subprocess.run(["umount", "-l", str(root)], check=False)


def fill(root: Path, leave_bytes: int) -> None:
    stat = os.statvfs(root)
    free = stat.f_bavail * stat.f_frsize
    with open(root / "filler", "wb") as handle:
        handle.truncate(0)
        remaining = max(0, free - leave_bytes)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            written = handle.write(chunk[: min(len(chunk), remaining)])
            remaining -= written


def test_a_builder_with_a_full_disk_is_marked_and_skipped_by_the_next_build(tmp_path, admin, unique_repo):
    key = f"faults-disk-{uuid.uuid4().hex[:10]}"
    victim = affine_builder(admin, key)
    root = NODE_PODS / f"{NAMESPACE}_{victim}" / "root"
    pid = buildkitd_pid(victim)
    mount_small_filesystem(root, 96)
    try:
        pid = kill_buildkitd(victim)  # the emulator restarts it, now on the small filesystem
        wait_for(lambda: ready_again(admin, victim, pid), 90, f"{victim} to start on its small disk")
        pid = buildkitd_pid(victim)
        fill(root, leave_bytes=2 << 20)

        app, marker = sleeping_app(tmp_path, 1)
        first = Warmbuild(pool_args(app, tmp_path, key, "--tag", f"{unique_repo}:1", "--push"), tmp_path)
        assert first.wait(timeout=300) == 0, first.output
        result = json.loads((tmp_path / "result.json").read_text())
        assert result["attempts"] == 2, first.output
        lost, built = result["attempt_history"]
        assert lost["builder_name"] == victim and lost["cause"] == "disk full" and lost["marked_unhealthy"], lost
        assert built["builder_name"] != victim and built["outcome"] == "success"

        status = pool_status(tmp_path)
        assert status[victim]["unhealthy"] == "disk full" and status[victim]["unhealthy_until"], status[victim]

        # The next build of the same workload skips the marked builder at once: one attempt, elsewhere.
        (app / "Dockerfile").write_text((app / "Dockerfile").read_text() + "RUN echo again\n")
        second = Warmbuild(pool_args(app, tmp_path, key, "--tag", f"{unique_repo}:2", "--push"), tmp_path)
        assert second.wait(timeout=300) == 0, second.output
        again = json.loads((tmp_path / "result.json").read_text())
        assert again["attempts"] == 1 and again["placement"]["builder_name"] != victim, second.output
        assert second.builders() == [again["placement"]["builder_name"]]
    finally:
        try:
            pid = kill_buildkitd(victim)
        finally:
            unmount(root)
        wait_for(lambda: ready_again(admin, victim, pid), 90, f"{victim} to start on its own disk again")


# --- the registry fails during a push ---------------------------------------------------------------


def test_a_registry_outage_during_the_push_is_retried_and_the_tag_is_right(tmp_path, builder, registry_manifest):
    try:
        proxy = ThrottlingProxy(bytes_per_second=2_000_000)
    except OSError as exc:
        pytest.fail(f"127.0.0.1:5001 is taken ({exc}): is another test's registry proxy still running?")
    try:
        app = tmp_path / "app"
        app.mkdir()
        blob = uuid.uuid4().hex
        (app / "Dockerfile").write_text(
            f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN head -c 6000000 /dev/urandom > /blob-{blob}\n"
        )
        tag = f"127.0.0.1:5001/warmbuild-tests/registry-outage-{blob[:10]}:x"
        run = Warmbuild(
            [
                "build",
                str(app),
                "--builder",
                builder,
                "--tag",
                tag,
                "--push",
                "--result-file",
                str(tmp_path / "r.json"),
            ],
            tmp_path,
        )
        assert proxy.upload_started.wait(180), run.output
        time.sleep(0.5)
        # Every open connection cut, then 503s for 10 s: a registry restarting. BuildKit retries a
        # failing registry request itself for a few seconds; warmbuild's retries take over after that.
        proxy.outage(10.0)
        code = run.wait(timeout=300)
    finally:
        proxy.close()
    assert code == 0, run.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["registry_retries"] >= 1, run.output
    assert any("solved again on the same builder" in w for w in result["warnings"])
    assert result["attempts"] == 1 and result["image"]["pushed"] is True
    assert (
        registry_manifest(tag.replace("127.0.0.1:5001", os.environ["WARMBUILD_REGISTRY"]))[0]
        == result["image"]["digest"]
    )
