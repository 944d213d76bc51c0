"""Running buildctl: reachability check, the solve itself, and what it produced.

What a failure means (the build's fault, a lost or broken builder, the registry) is decided in
`failures`; this module runs the process and hands it what the progress stream showed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

from ..config import BuilderEndpoint, BuildRequest
from ..errors import BuilderLost, BuilderUnreachable, Cancelled, LeaseLost, ToolMissing, WarmbuildError
from .command import build_argv, connection_args
from .failures import classify_failure, push_started
from .phases import SolvePhases, solve_phases
from .progress import CacheStats, ProgressTracker, StepResult

CONNECT_TIMEOUT_SECONDS = 5.0
CANCEL_GRACE_SECONDS = 3.0
CLOCK_MARGIN = timedelta(seconds=5)  # builder and runner clocks may differ a little


@dataclass(frozen=True)
class SolveOutcome:
    image_digest: str | None
    config_digest: str | None
    image_names: tuple[str, ...]
    steps: tuple[StepResult, ...]
    cache: CacheStats
    phases: SolvePhases
    seconds: float
    warnings: tuple[str, ...]
    failure: WarmbuildError | None = None  # set when the solve failed or was cancelled


class SolveAbort:
    """Lets another thread stop a running solve (fencing: the slot lease was lost). `builder_left`:
    the Lease went with its builder pod, so the build did not lose a race, it lost its builder."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.builder_left = False
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def attach(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._process = process
            if self.reason is not None:
                _interrupt(process)

    def trigger(self, reason: str, builder_left: bool = False) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
                self.builder_left = builder_left
            if self._process is not None:
                _interrupt(self._process)


def _interrupt(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        threading.Timer(CANCEL_GRACE_SECONDS, _kill_if_running, args=(process,)).start()


def find_buildctl(explicit: str | None = None) -> str:
    candidate = explicit or os.environ.get("WARMBUILD_BUILDCTL") or "buildctl"
    path = shutil.which(candidate)
    if path is None:
        raise ToolMissing(
            f"buildctl not found ('{candidate}'): install BuildKit's buildctl on PATH or set WARMBUILD_BUILDCTL"
        )
    return path


def check_reachable(builder: BuilderEndpoint, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Fail within `timeout` seconds if nothing accepts connections at the builder's address."""
    host_port = builder.host_port
    try:
        if host_port is not None:
            with socket.create_connection(host_port, timeout=timeout):
                return
        else:
            path = builder.address.removeprefix("unix://")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(path)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise BuilderLost(
            f"builder {builder.address} is unreachable ({reason}): check that buildkitd runs there and the address is right",
            cause="unreachable",
        ) from None


def check_buildkit_answers(buildctl: str, builder: BuilderEndpoint, timeout: float = 5.0) -> None:
    """A TCP listener is not proof of buildkitd (or of matching TLS): ask it for its workers.

    Through the gateway this is the only check before the solve (no separate TCP probe: one
    connection fewer per build), so its failure names both the builder and the gateway."""
    argv = connection_args(buildctl, builder) + ["--timeout", str(int(timeout)), "debug", "workers"]
    what = f"builder {builder.address}"
    if builder.via_gateway and builder.tls is not None:
        what = f"builder {builder.tls.server_name} through the gateway {builder.address}"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 2, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BuilderLost(
            f"{what} accepted a connection but did not answer as buildkitd within {timeout:.0f}s",
            cause="not answering",
        ) from None
    if done.returncode != 0:
        detail = _last_line(done.stderr) or f"exit status {done.returncode}"
        if builder.tls is not None and ("x509:" in detail or "tls:" in detail):
            name = builder.tls.server_name or builder.address
            raise BuilderUnreachable(f"{what} failed the TLS check as {name}: {detail}")
        raise BuilderLost(f"{what} did not answer as buildkitd: {detail}", cause="not answering")


def run_solve(
    buildctl: str,
    builder: BuilderEndpoint,
    request: BuildRequest,
    progress_out: TextIO | None = None,
    abort: SolveAbort | None = None,
) -> SolveOutcome:
    """Run one `buildctl build`, streaming plain progress lines to `progress_out`.

    A failed solve is returned, not raised, with `failure` set, so the steps seen so far still
    reach the report. SIGINT, SIGTERM and SIGHUP received meanwhile are passed to buildctl, which
    cancels the solve; `failure` is then `Cancelled` (exit 128+signal).
    """
    progress_out = sys.stderr if progress_out is None else progress_out
    tracker = ProgressTracker()
    with tempfile.TemporaryDirectory(prefix="warmbuild-") as tmp:
        metadata_file = Path(tmp) / "metadata.json"
        argv = build_argv(buildctl, builder, request, metadata_file)
        started = time.monotonic()
        started_wall = datetime.now(timezone.utc)
        process = subprocess.Popen(
            _die_with_parent(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # signals reach it only through us, once
        )
        if abort is not None:
            abort.attach(process)
        received: list[int] = []

        def forward(signum, _frame):
            received.append(signum)
            if process.poll() is not None:
                return
            if len(received) == 1:
                process.send_signal(signal.SIGINT)  # buildctl cancels the solve on the daemon
                # A cancel that hangs must not hold the CI job: kill buildctl after a grace period.
                threading.Timer(CANCEL_GRACE_SECONDS, _kill_if_running, args=(process,)).start()
            else:
                process.kill()

        previous = _install_handlers(forward)
        try:
            assert process.stderr is not None
            for line in process.stderr:
                for plain in tracker.feed_line(line):
                    print(plain, file=progress_out, flush=True)
            returncode = process.wait()
        finally:
            _restore_handlers(previous)
            if process.poll() is None:
                process.kill()
                process.wait()
        seconds = time.monotonic() - started
        failure: WarmbuildError | None = None
        if received:
            failure = Cancelled(received[0], signal.Signals(received[0]).name)
        elif abort is not None and abort.reason is not None and abort.builder_left:
            failure = BuilderLost(
                f"{abort.reason}: the build was stopped", cause="builder left the pool", unhealthy=False
            )
            failure.push_started = push_started(tracker.steps(), request.push)
        elif abort is not None and abort.reason is not None:
            failure = LeaseLost(
                f"{abort.reason}: the build was aborted so that two builds never share a slot; rerun the job"
            )
        elif returncode != 0:
            failure = _failure(tracker, returncode, request)
        metadata = _read_metadata(metadata_file) if failure is None else {}

    return SolveOutcome(
        image_digest=metadata.get("containerimage.digest"),
        config_digest=metadata.get("containerimage.config.digest"),
        image_names=tuple(n for n in str(metadata.get("image.name", "")).split(",") if n),
        steps=tracker.steps(),
        cache=tracker.cache_stats(),
        phases=solve_phases(
            tracker.steps(),
            tracker.sub_statuses(),
            window=(started_wall - CLOCK_MARGIN, started_wall + timedelta(seconds=seconds) + CLOCK_MARGIN),
        ),
        seconds=round(seconds, 3),
        warnings=tuple(tracker.warnings) + _ignored_export_errors(tracker.steps(), failure),
        failure=failure,
    )


def _die_with_parent(argv: list[str]) -> list[str]:
    """buildctl runs in its own session, so a killed warmbuild would leave it building: have the
    kernel send it SIGINT (cancel the solve) when warmbuild dies, where util-linux's setpriv exists."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "INT", "--", *argv] if setpriv else argv


def _kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()


def _install_handlers(handler):
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: the caller handles signals
            break
    return previous


def _restore_handlers(previous) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def ignored_export_errors(outcome: SolveOutcome) -> tuple[str, ...]:
    """The errors of cache exports that failed without failing the build (CacheSpec.ignore_error)."""
    if outcome.failure is not None:
        return ()
    return tuple(s.error for s in outcome.steps if s.error and s.name.startswith("exporting cache"))


def _ignored_export_errors(steps: tuple[StepResult, ...], failure) -> tuple[str, ...]:
    """A cache export that may fail (CacheSpec.ignore_error) fails without failing the build: say so."""
    if failure is not None:
        return ()
    return tuple(
        f"{s.name} failed and was skipped: {s.error}" for s in steps if s.error and s.name.startswith("exporting cache")
    )


def _read_metadata(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _failure(tracker: ProgressTracker, returncode: int, request: BuildRequest) -> WarmbuildError:
    failed = tracker.failed_step()
    return classify_failure(
        failed,
        tracker.log_tail(failed.digest) if failed is not None else (),
        _last_line("\n".join(tracker.unparsed)),
        returncode,
        request.tags,
        request.push,
        push_started(tracker.steps(), request.push),
    )
