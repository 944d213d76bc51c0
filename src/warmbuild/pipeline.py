"""One build from validated inputs to a written result: the stages wired in order.

Placement (which builder) is decided before this is called; here the solve runs and its
outcome — success or failure — becomes a BuildResult, build-result.json and CI outputs.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from datetime import datetime, timezone
from typing import Mapping, TextIO

from . import __version__
from .buildkit import CacheStats, SolveAbort, check_buildkit_answers, check_reachable, find_buildctl, run_solve
from .ci import publishers_from_env
from .ci.state import ReleaseState, remove_state, write_state
from .cluster import KubeClient
from .config import BuilderEndpoint, BuildRequest, TlsFiles
from .leases import LeaseKeeper, release_slot
from .placement import PlacementRequest, acquire_build_slot
from .errors import BuildFailed, Cancelled, WarmbuildError
from .report import BuildResult, Placement, Timings, render_table, result_to_dict, write_result_file


def run_build(
    request: BuildRequest,
    builder: BuilderEndpoint,
    placement: Placement,
    *,
    queue_seconds: float = 0.0,
    startup_seconds: float = 0.0,
    buildctl: str | None = None,
    log: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    abort: SolveAbort | None = None,
) -> BuildResult:
    """Run the solve and report it. Raises the build's WarmbuildError after the result is written."""
    environ = os.environ if environ is None else environ
    log = sys.stderr if log is None else log
    started_at = datetime.now(timezone.utc)
    failure: WarmbuildError | None = None
    outcome = None
    try:
        buildctl_path = find_buildctl(buildctl)
        check_reachable(builder)
        check_buildkit_answers(buildctl_path, builder)
        outcome = run_solve(buildctl_path, builder, request, progress_out=log, abort=abort)
        failure = outcome.failure
    except WarmbuildError as exc:
        failure = exc
    finished_at = datetime.now(timezone.utc)

    wall = (finished_at - started_at).total_seconds()
    timings = Timings(
        queue_seconds=round(queue_seconds, 3),
        startup_seconds=round(startup_seconds, 3),
        total_seconds=round(queue_seconds + startup_seconds + wall, 3),
    )
    if outcome is not None:
        timings = replace(
            timings,
            context_seconds=outcome.phases.context_seconds,
            build_seconds=outcome.phases.build_seconds,
            export_seconds=outcome.phases.export_seconds,
            push_seconds=outcome.phases.push_seconds,
        )
    result = BuildResult(
        status="success" if failure is None else ("cancelled" if isinstance(failure, Cancelled) else "failed"),
        placement=placement,
        timings=timings,
        cache=outcome.cache if outcome else CacheStats(0, 0),
        steps=outcome.steps if outcome else (),
        image_digest=outcome.image_digest if outcome else None,
        config_digest=outcome.config_digest if outcome else None,
        image_names=outcome.image_names if outcome else (),
        pushed=bool(outcome and request.push and outcome.image_digest),
        started_at=started_at,
        finished_at=finished_at,
        error=failure.message if failure else None,
        exit_code=failure.exit_code if failure else 0,
        warnings=outcome.warnings if outcome else (),
    )
    document = result_to_dict(result, __version__)
    write_result_file(result, request.result_file, __version__)
    for publisher in publishers_from_env(environ):
        publisher.publish(result, document)
    print(render_table(result), file=log)
    if failure is not None:
        if isinstance(failure, BuildFailed) and failure.log_tail:
            print("last lines of the failed step:", file=log)
            for line in failure.log_tail:
                print(f"  | {line}", file=log)
        raise failure
    return result


def run_pool_build(
    request: BuildRequest,
    client: KubeClient,
    placement_request: PlacementRequest,
    *,
    tls: TlsFiles | None,
    state: ReleaseState,
    state_file: Path,
    buildctl: str | None = None,
    log: TextIO | None = None,
) -> BuildResult:
    """Take a slot in the pool, build on that builder, and give the slot back whatever happens."""
    log = sys.stderr if log is None else log
    started = time.monotonic()
    grant = acquire_build_slot(client, placement_request, log=lambda line: print(f"warmbuild: {line}", file=log, flush=True))
    try:
        write_state(state_file, replace(state, lease=grant.lease.name, holder=grant.lease.holder))
        queue_seconds = time.monotonic() - started
        print(
            f"warmbuild: slot {grant.lease.name} on {grant.builder.name} ({grant.builder.address}); {grant.reason}",
            file=log,
            flush=True,
        )
        abort = SolveAbort()
        keeper = LeaseKeeper(client, grant.lease, on_lost=abort.trigger).start()
        try:
            return run_build(
                request,
                BuilderEndpoint(address=grant.builder.address, tls=tls),
                Placement(
                    builder=grant.builder.address,
                    path=grant.path,
                    builder_name=grant.builder.name,
                    affine=grant.affine,
                    reason=grant.reason,
                ),
                queue_seconds=queue_seconds,
                buildctl=buildctl,
                log=log,
                abort=abort,
            )
        finally:
            keeper.stop()
    finally:
        release_slot(client, grant.lease.namespace, grant.lease.name, grant.lease.holder)
        remove_state(state_file)
