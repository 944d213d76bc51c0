"""Cancellation on the real testbed: a signal cancels the solve on the builder, gives the slot
back and ends warmbuild within 5 s, in direct mode and through the pool.

Evidence is taken from the real parts: the RUN step's process on this machine (buildkitd's runc
containers share its process table), buildctl's process, the slot's Lease in the API server,
the registry's manifests, and build-result.json.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import socket
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
from warmbuild.pool.leases import list_pool_leases

CANCEL_BUDGET_SECONDS = 5.0
POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
# A process is watched for the cancel budget: polled finely, so the wait itself adds little to it.
wait_for = functools.partial(poolkit.wait_for, interval=0.1)


# --- helpers -----------------------------------------------------------------------------------


def processes() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, state, command line) for every process on this machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (int(fields[1]), fields[0], cmdline)
    return found


def alive(pid: int) -> bool:
    info = processes().get(pid)
    return info is not None and info[1] != "Z"


def running_with(marker: str) -> list[int]:
    return [
        pid for pid, (_, state, cmd) in processes().items() if marker in cmd and state != "Z" and pid != os.getpid()
    ]


def buildctl_of(pid: int) -> list[int]:
    return [p for p, (ppid, _, cmd) in processes().items() if ppid == pid and "buildctl" in cmd and " build " in cmd]


class Warmbuild:
    """`warmbuild` (or a CI entry point) as a separate process, as a CI job runs it."""

    def __init__(self, argv: list[str], env: dict, cwd: Path):
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def signal(self, signum: int) -> float:
        self.process.send_signal(signum)
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(timeout=5)


def sleeping_app(tmp_path: Path, base_image: str) -> tuple[Path, str]:
    marker = f"wb-cancel-{uuid.uuid4().hex[:12]}"
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN echo {marker}-started && sleep 60 && echo {marker}-finished\n"
    )
    return app, marker


def base_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GITLAB_", "INPUT_"))}
    env.pop("CI", None)
    env.update(extra)
    return env


def warmbuild_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "warmbuild.cli", *args]


def assert_cancelled_within_budget(
    run: Warmbuild, signalled_at: float, expected_code: int, marker: str, result_file: Path
):
    code = run.wait(timeout=30)
    elapsed = time.monotonic() - signalled_at
    assert code == expected_code, run.output
    assert elapsed < CANCEL_BUDGET_SECONDS, f"took {elapsed:.1f}s to cancel\n{run.output}"
    # The RUN step's process is gone: the solve was cancelled on the builder, not just abandoned.
    wait_for(lambda: not running_with(marker), CANCEL_BUDGET_SECONDS, f"the RUN step with {marker} to stop")
    result = json.loads(result_file.read_text())
    assert result["status"] == "cancelled" and result["exit_code"] == expected_code
    assert result["error"] == f"cancelled by {signal.Signals(expected_code - 128).name}"
    assert result["image"]["pushed"] is False and result["image"]["digest"] is None
    return result


# --- direct mode -------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_a_step_cancels_the_solve_in_direct_mode(signum, tmp_path, builder):
    app, marker = sleeping_app(tmp_path, os.environ["WARMBUILD_BASE_IMAGE"])
    result_file = tmp_path / "result.json"
    run = Warmbuild(
        warmbuild_argv("build", str(app), "--builder", builder, "--result-file", str(result_file)), base_env(), tmp_path
    )
    wait_for(lambda: running_with(marker), 60, "the RUN step to start")
    (buildctl,) = buildctl_of(run.process.pid)
    signalled_at = run.signal(signum)
    assert_cancelled_within_budget(run, signalled_at, 128 + signum, marker, result_file)
    assert not alive(buildctl)


def test_a_signal_during_the_push_cancels_it_and_nothing_is_pushed(tmp_path, builder, registry):
    try:
        proxy = ThrottlingProxy()
    except OSError as exc:
        pytest.fail(f"127.0.0.1:5001 is taken ({exc}): is another test's registry still running?")
    try:
        app = tmp_path / "app"
        app.mkdir()
        blob = uuid.uuid4().hex
        (app / "Dockerfile").write_text(
            f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN head -c 20000000 /dev/urandom > /blob-{blob}\n"
        )
        repo = f"warmbuild-tests/push-cancel-{blob[:10]}"
        result_file = tmp_path / "result.json"
        run = Warmbuild(
            warmbuild_argv(
                "build",
                str(app),
                "--builder",
                builder,
                "--tag",
                f"127.0.0.1:5001/{repo}:x",
                "--push",
                "--result-file",
                str(result_file),
            ),
            base_env(),
            tmp_path,
        )
        assert proxy.upload_started.wait(120), run.output
        (buildctl,) = buildctl_of(run.process.pid)
        signalled_at = run.signal(signal.SIGINT)
        code = run.wait(timeout=30)
        elapsed = time.monotonic() - signalled_at
    finally:
        proxy.close()
    assert code == 130, run.output
    assert elapsed < CANCEL_BUDGET_SECONDS, run.output
    assert not alive(buildctl)
    result = json.loads(result_file.read_text())
    assert result["status"] == "cancelled" and result["image"]["pushed"] is False and result["image"]["digest"] is None
    assert any(s["name"].startswith("exporting to image") for s in result["steps"])
    manifest = requests.get(f"http://{registry}/v2/{repo}/manifests/x", timeout=10)
    assert manifest.status_code == 404, "a cancelled push must not leave the tag behind"


# --- pool mode ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin():
    if not os.environ.get("KUBECONFIG") or not os.environ.get("WARMBUILD_CI_KUBECONFIG"):
        pytest.fail('the testbed\'s control plane is not up: eval "$(testbed/up)" exports KUBECONFIG')
    return connect(os.environ["KUBECONFIG"])


def held_by(admin, holder_prefix: str) -> list[str]:
    """Slots whose Lease names a holder starting with the prefix (released ones have no holder)."""
    return [
        name
        for name, lease in list_pool_leases(admin, NAMESPACE, POOL).items()
        if lease.holder.startswith(holder_prefix)
    ]


def holder_of(pid: int) -> str:
    return f"{socket.gethostname()}/{pid}/"  # how the CLI names its holder identity


def pool_argv(app: Path, tmp_path: Path, *extra: str) -> list[str]:
    return warmbuild_argv(
        "build",
        str(app),
        "--pool",
        POOL,
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        os.environ["WARMBUILD_CI_KUBECONFIG"],
        "--state-file",
        str(tmp_path / "state.json"),
        "--result-file",
        str(tmp_path / "result.json"),
        *extra,
    )


def pool_env() -> dict:
    env = base_env()
    env.pop("WARMBUILD_BUILDER", None)  # it would win over the pool
    return env


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_a_pool_build_cancels_it_and_releases_the_slot(signum, tmp_path, admin):
    app, marker = sleeping_app(tmp_path, os.environ["WARMBUILD_BASE_IMAGE"])
    run = Warmbuild(pool_argv(app, tmp_path), pool_env(), tmp_path)
    wait_for(lambda: running_with(marker), 60, "the RUN step to start")
    assert len(held_by(admin, holder_of(run.process.pid))) == 1, "the build holds exactly one slot"
    assert (tmp_path / "state.json").is_file()
    (buildctl,) = buildctl_of(run.process.pid)
    signalled_at = run.signal(signum)
    result = assert_cancelled_within_budget(run, signalled_at, 128 + signum, marker, tmp_path / "result.json")
    assert not alive(buildctl)
    assert held_by(admin, holder_of(run.process.pid)) == [], "the slot was released, not left to expire"
    assert not (tmp_path / "state.json").exists()
    assert result["placement"]["path"] in ("warm", "spill")


@pytest.mark.parametrize("gap", [0.3, 1.5])
def test_githubs_sigint_then_sigterm_still_releases_the_slot(gap, tmp_path, admin):
    """GitHub sends SIGINT, then SIGTERM 7.5 s later; here the second comes while cleanup runs."""
    app, marker = sleeping_app(tmp_path, os.environ["WARMBUILD_BASE_IMAGE"])
    run = Warmbuild(pool_argv(app, tmp_path), pool_env(), tmp_path)
    wait_for(lambda: running_with(marker), 60, "the RUN step to start")
    signalled_at = run.signal(signal.SIGINT)
    time.sleep(gap)
    if run.process.poll() is None:
        run.signal(signal.SIGTERM)
    code = run.wait(timeout=30)
    assert code == 130, run.output  # the first signal decides
    assert time.monotonic() - signalled_at < CANCEL_BUDGET_SECONDS + gap
    assert held_by(admin, holder_of(run.process.pid)) == []
    assert not (tmp_path / "state.json").exists()
    wait_for(lambda: not running_with(marker), CANCEL_BUDGET_SECONDS, "the RUN step to stop")
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "cancelled"


def test_a_second_signal_during_the_release_does_not_cut_it_short(tmp_path, admin, tiny_app, registry, monkeypatch):
    """In process: SIGTERM arrives exactly inside the release; it finishes, then the signal counts."""
    from warmbuild import pipeline
    from warmbuild.config import build_request
    from warmbuild.errors import Cancelled
    from warmbuild.pool import broker
    from warmbuild.pool.leases import HolderInfo
    from warmbuild.pool.placement import PlacementRequest
    from warmbuild.pool.state import ReleaseState
    from warmbuild.pool.workload import explicit_key
    from warmbuild.signals import install_cancel_handlers

    real_release = broker.release_slot
    events = []

    def release_with_a_signal_inside(client, namespace, name, holder):
        os.kill(os.getpid(), signal.SIGTERM)
        events.append("signalled")
        released = real_release(client, namespace, name, holder)
        events.append(("released", released))
        return released

    monkeypatch.setattr(broker, "release_slot", release_with_a_signal_inside)  # DirectLeases.release
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    install_cancel_handlers()
    holder = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    try:
        request = build_request(
            context=str(tiny_app),
            build_args=[f"REGISTRY={registry}"],
            result_file=str(tmp_path / "result.json"),
            environ={},
        )
        with pytest.raises(Cancelled) as err:
            pipeline.run_pool_build(
                request,
                pipeline.PoolBuild(
                    placement=PlacementRequest(
                        NAMESPACE,
                        POOL,
                        explicit_key(f"test-{uuid.uuid4().hex}"),
                        HolderInfo(holder),
                        max_wait_seconds=30,
                    ),
                    release_state=ReleaseState(namespace=NAMESPACE, lease="", holder=""),
                    state_file=tmp_path / "state.json",
                ),
                broker.DirectLeases(connect(os.environ["WARMBUILD_CI_KUBECONFIG"])),
                log=io.StringIO(),
            )
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert events == ["signalled", ("released", True)]
    assert err.value.exit_code == 143
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "success"  # the build itself finished
    assert not (tmp_path / "state.json").exists()
    assert held_by(admin, holder) == []
