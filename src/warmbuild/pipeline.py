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
from typing import Callable, Mapping, TextIO

from . import __version__
from .buildkit import CacheStats, SolveAbort, check_buildkit_answers, check_reachable, find_buildctl, run_solve
from .ci import publishers_from_env
from .ci.report_files import ReportFilesPublisher
from .ci.sections import log_section
from .pool.state import ReleaseState, remove_state, write_state
from .pool.broker import DirectLeases, SlotBroker
from .kube.client import KubeClient
from .config import BuilderEndpoint, BuildRequest, TlsFiles
from .cache import cache_options
from .pool.ephemeral import EphemeralSettings, create_ephemeral_pod, create_run_lease, delete_ephemeral_pod, ephemeral_pod_manifest, wait_until_ready
from .pool.history import BuildRecord, append_record, key_hash
from .pool.leases import LeaseKeeper
from .pool.placement import PlacementRequest
from .errors import BuildFailed, Cancelled, WarmbuildError
from .report import BuildResult, Placement, Timings, render_table, result_to_dict, write_result_file
from .signals import signals_deferred


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
    on_result: Callable[[BuildResult], None] | None = None,
) -> BuildResult:
    """Run the solve and report it. Raises the build's WarmbuildError after the result is written."""
    environ = os.environ if environ is None else environ
    log = sys.stderr if log is None else log
    started_at = datetime.now(timezone.utc)
    failure: WarmbuildError | None = None
    outcome = None
    try:
        with log_section(log, environ, "warmbuild_build", f"Build on {builder.address}"):
            buildctl_path = find_buildctl(buildctl)
            check_reachable(builder)
            check_buildkit_answers(buildctl_path, builder)
            outcome = run_solve(buildctl_path, builder, request, progress_out=log, abort=abort)
        failure = outcome.failure
    except WarmbuildError as exc:
        failure = exc
    with signals_deferred():  # after the solve, a second signal must not leave the result half written
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
        if on_result is not None:
            on_result(result)
        document = result_to_dict(result, __version__)
        write_result_file(result, request.result_file, __version__)
        for publisher in [*publishers_from_env(environ), ReportFilesPublisher.from_env(environ)]:
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
    client: KubeClient | None,
    placement_request: PlacementRequest,
    *,
    tls: TlsFiles | None,
    state: ReleaseState,
    state_file: Path,
    cache_ref: str | None = None,
    cache_export: str = "auto",
    ephemeral: EphemeralSettings | None = None,
    buildctl: str | None = None,
    log: TextIO | None = None,
    broker: SlotBroker | None = None,
) -> BuildResult:
    """Place the build in the pool, run it there, give back the slot or delete the ephemeral
    builder whatever happens, and add the build to the pool's history."""
    log = sys.stderr if log is None else log
    started = time.monotonic()
    reported: list[BuildResult] = []

    def reporting(record: Callable[[BuildResult], None]) -> Callable[[BuildResult], None]:
        def on_result(result: BuildResult) -> None:
            reported.append(result)
            record(result)

        return on_result

    try:
        return _place_and_build(
            request, client, placement_request, tls=tls, state=state, state_file=state_file, cache_ref=cache_ref,
            cache_export=cache_export, ephemeral=ephemeral, buildctl=buildctl, log=log, broker=broker,
            started=started, reporting=reporting,
        )
    except WarmbuildError as failure:
        if not reported:  # placement or builder startup failed: no solve ran, but CI still gets a result
            report_unbuilt(request, failure, queue_seconds=time.monotonic() - started, log=log)
        raise


def report_unbuilt(request: BuildRequest, failure: WarmbuildError, *, queue_seconds: float, log: TextIO,
                   environ: Mapping[str, str] | None = None) -> BuildResult:
    """The result of a build that never reached a builder: written and published like any other."""
    environ = os.environ if environ is None else environ
    now = datetime.now(timezone.utc)
    result = BuildResult(
        status="cancelled" if isinstance(failure, Cancelled) else "failed",
        placement=Placement(builder="", path="none", reason=failure.message),
        timings=Timings(queue_seconds=round(queue_seconds, 3), total_seconds=round(queue_seconds, 3)),
        cache=CacheStats(0, 0),
        started_at=now,
        finished_at=now,
        error=failure.message,
        exit_code=failure.exit_code,
    )
    with signals_deferred():
        document = result_to_dict(result, __version__)
        write_result_file(result, request.result_file, __version__)
        for publisher in [*publishers_from_env(environ), ReportFilesPublisher.from_env(environ)]:
            publisher.publish(result, document)
    return result


def _place_and_build(
    request: BuildRequest,
    client: KubeClient | None,
    placement_request: PlacementRequest,
    *,
    tls: TlsFiles | None,
    state: ReleaseState,
    state_file: Path,
    cache_ref: str | None,
    cache_export: str,
    ephemeral: EphemeralSettings | None,
    buildctl: str | None,
    log: TextIO,
    broker: SlotBroker | None,
    started: float,
    reporting: Callable[[Callable[[BuildResult], None]], Callable[[BuildResult], None]],
) -> BuildResult:
    broker = broker or DirectLeases(client)  # or the scheduler's client, for runners without Lease RBAC (client None)
    title = f"Placement: a slot in pool '{placement_request.pool}' (namespace {placement_request.namespace})"
    grant = None
    try:  # from the moment a slot is granted, every way out releases it
        with log_section(log, os.environ, "warmbuild_placement", title):
            grant = broker.acquire(placement_request, log=lambda line: print(f"warmbuild: {line}", file=log, flush=True))
        queue_seconds = time.monotonic() - started
        options = cache_options(grant.path, cache_ref, cache_export, request.push, placement_request.untrusted,
                                request.compression)
        request = replace(request, cache_imports=request.cache_imports + options.imports,
                          cache_exports=request.cache_exports + options.exports)
        record = reporting(_history_recorder(client, placement_request, started_wall=client.server_now()) if client else (lambda _result: None))
        if grant.path == "ephemeral":
            return _run_on_ephemeral_builder(
                request, client, placement_request, grant, queue_seconds,
                tls=tls, state=state, state_file=state_file, settings=ephemeral or EphemeralSettings(),
                buildctl=buildctl, log=log, on_result=record,
            )
        write_state(state_file, replace(state, lease=grant.lease.name, holder=grant.lease.holder))
        print(
            f"warmbuild: slot {grant.lease.name} on {grant.builder.name} ({grant.builder.address}); {grant.reason}",
            file=log,
            flush=True,
        )
        abort = SolveAbort()
        keeper = broker.keep(grant, on_lost=abort.trigger)
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
                on_result=record,
            )
        finally:
            with signals_deferred():
                keeper.stop()
    finally:
        # Cancellation cleanup: runs to its end even if another signal arrives (signals_deferred).
        if grant is not None and grant.lease is not None:
            with signals_deferred():
                try:
                    broker.release(grant)
                    remove_state(state_file)
                except WarmbuildError as exc:
                    # The build's outcome stands; the slot frees itself when its lease expires, and
                    # the state file stays for a `warmbuild release` post step to try again.
                    print(f"warmbuild: warning: could not release slot {grant.lease.name} "
                          f"(it frees itself within {grant.lease.duration_seconds}s): {exc.message}", file=log, flush=True)


def _run_on_ephemeral_builder(
    request: BuildRequest,
    client: KubeClient,
    placement_request: PlacementRequest,
    grant,
    queue_seconds: float,
    *,
    tls: TlsFiles | None,
    state: ReleaseState,
    state_file: Path,
    settings: EphemeralSettings,
    buildctl: str | None,
    log: TextIO,
    on_result: Callable[[BuildResult], None],
) -> BuildResult:
    namespace, holder = placement_request.namespace, placement_request.holder
    manifest = ephemeral_pod_manifest(settings, namespace, placement_request.pool, holder)
    pod_name = None
    keeper = None
    state_kept = False
    abort = SolveAbort()
    started = time.monotonic()
    try:
        with log_section(log, os.environ, "warmbuild_startup", "Startup: ephemeral builder"):
            print(f"warmbuild: starting an ephemeral builder: {grant.reason}", file=log, flush=True)
            with signals_deferred():  # a pod created must be known before a signal can interrupt
                pod_name, pod_uid = create_ephemeral_pod(client, manifest)
                write_state(state_file, replace(state, lease=pod_name, holder=holder.identity, ephemeral_pod=pod_name))
            run_lease = create_run_lease(client, namespace, pod_name, pod_uid, holder, placement_request.lease_seconds)
            keeper = LeaseKeeper(client, run_lease, on_lost=abort.trigger).start()
            address = wait_until_ready(client, namespace, pod_name, settings.startup_timeout_seconds)
        startup_seconds = time.monotonic() - started
        print(f"warmbuild: ephemeral builder {pod_name} ready at {address} after {startup_seconds:.1f}s", file=log, flush=True)
        return run_build(
            request,
            BuilderEndpoint(address=address, tls=tls),
            Placement(builder=address, path="ephemeral", builder_name=pod_name, affine=False, reason=grant.reason),
            queue_seconds=queue_seconds,
            startup_seconds=startup_seconds,
            buildctl=buildctl,
            log=log,
            abort=abort,
            on_result=on_result,
        )
    finally:
        with signals_deferred():
            if keeper is not None:
                keeper.stop()
            if pod_name is not None:
                try:
                    delete_ephemeral_pod(client, namespace, pod_name)  # its run Lease goes with it (owner)
                except WarmbuildError as exc:
                    print(f"warmbuild: warning: could not delete ephemeral builder {pod_name} "
                          f"('warmbuild release' or 'warmbuild gc' will): {exc.message}", file=log, flush=True)
                    state_kept = True
            if not state_kept:
                remove_state(state_file)


def _history_recorder(client: KubeClient, placement_request: PlacementRequest, started_wall) -> Callable[[BuildResult], None]:
    """Append a finished build to the pool's history; never fails the build."""

    def record(result: BuildResult) -> None:
        if result.status == "cancelled":
            return
        t = result.timings
        entry = BuildRecord(
            key=key_hash(placement_request.workload_key),
            started=started_wall.timestamp(),
            path=result.placement.path,
            builder=result.placement.builder_name or result.placement.builder,
            queue_seconds=t.queue_seconds,
            startup_seconds=t.startup_seconds,
            build_seconds=round(t.total_seconds - t.queue_seconds - t.startup_seconds, 3),
            total_seconds=t.total_seconds,
            cache_ratio=round(result.cache.ratio, 4),
            status=result.status,
        )
        try:
            append_record(client, placement_request.namespace, placement_request.pool, entry)
        except WarmbuildError:
            pass

    return record
