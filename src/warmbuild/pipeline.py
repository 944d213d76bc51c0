"""One build from validated inputs to a written result: place → build → report → publish.

`run_build` runs the solve on a given builder and turns its outcome — success or failure — into a
BuildResult, build-result.json and CI outputs. `run_pool_build` first gets a builder from a
`SlotBroker` (a warm slot, or an ephemeral builder it starts), keeps its Lease alive during the
solve, and gives it back on every way out. `plan_pool_build` derives, once, what the flags leave
open: the workload key, the holder, trust, the cache ref.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from . import __version__
from .buildkit import (
    CacheStats,
    SolveAbort,
    check_buildkit_answers,
    check_reachable,
    find_buildctl,
    ignored_export_errors,
    registry_retry_delay,
    run_solve,
)
from .cache import cache_options, default_cache_ref, exports_allowed
from .ci import publishers_from_env
from .ci.report_files import ReportFilesPublisher
from .ci.sections import log_section
from .config import (
    BuilderEndpoint,
    BuildRequest,
    PoolFlags,
    TlsFiles,
    ci_run_url,
    parse_builder,
    repository_identity,
    validate_image_reference,
)
from .errors import (
    BuilderLost,
    BuilderUnreachable,
    BuildFailed,
    Cancelled,
    ClusterRefused,
    ClusterUnavailable,
    WarmbuildError,
)
from .pool.broker import SlotBroker
from .pool.ephemeral import EphemeralSettings, load_ephemeral_settings
from .pool.leases import HolderInfo, builder_left
from .pool.placement import Grant, PlacementRequest
from .pool.run_certs import RunTls
from .pool.state import ReleaseState, remove_state, state_file_path, write_state
from .pool.workload import WorkloadKey, derive_workload_key
from .report import Attempt, BuildResult, Placement, Timings, render_table, result_to_dict, write_result_file
from .signals import signal_pending, signals_deferred
from .trust import Trust, check_direct_builder, decide_trust

RELEASE_OUTAGE_SECONDS = 30.0  # a release the API server or scheduler does not answer is asked again this long


class AttemptLost(Exception):
    """Raised by `run_build` instead of reporting when the builder was lost before the push began and
    the caller may try again elsewhere: nothing was written or published for this attempt."""

    def __init__(self, failure: BuilderLost, attempt: Attempt):
        super().__init__(failure.message)
        self.failure = failure
        self.attempt = attempt


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
    warnings: tuple[str, ...] = (),
    attempts: tuple[Attempt, ...] = (),
    retry_lost: bool = False,
    on_lost: Callable[[BuilderLost], bool] | None = None,
) -> BuildResult:
    """Run the solve and report it. Raises the build's WarmbuildError after the result is written.
    `warnings` are the caller's (e.g. a dropped --cache-to), reported ahead of BuildKit's.

    A push that failed on the registry's side is solved again on this builder with backoff
    (`buildkit.registry_retry_delay`). A lost builder (`BuilderLost`) is first given to `on_lost`
    (which marks it unhealthy and says whether it did); then, with `retry_lost` and nothing pushed
    yet, `AttemptLost` is raised without a result, for the caller to try another builder. `attempts`
    are the earlier tries of this build, reported with this one."""
    environ = os.environ if environ is None else environ
    log = sys.stderr if log is None else log
    started_at = datetime.now(timezone.utc)
    failure: WarmbuildError | None = None
    outcome = None
    registry_retries = 0
    try:
        with log_section(log, environ, "warmbuild_build", f"Build on {builder.address}"):
            buildctl_path = find_buildctl(buildctl)
            if not builder.via_gateway:  # through the gateway, `debug workers` alone proves the path
                check_reachable(builder)
            check_buildkit_answers(buildctl_path, builder)
            outcome = run_solve(buildctl_path, builder, request, progress_out=log, abort=abort)
            while (
                delay := registry_retry_delay(outcome.failure, ignored_export_errors(outcome), registry_retries)
            ) is not None:
                what = outcome.failure.message if outcome.failure else "; ".join(ignored_export_errors(outcome))
                retried = f"the registry failed the push, a pull or the cache export; solved again on the same builder after {delay:g}s"
                print(f"warmbuild: warning: {retried}: {what}", file=log, flush=True)
                warnings = (*warnings, f"{retried}: {what}")
                _sleep(delay)
                registry_retries += 1
                outcome = run_solve(buildctl_path, builder, request, progress_out=log, abort=abort)
        failure = outcome.failure
    except WarmbuildError as exc:
        failure = exc
    finished_at = datetime.now(timezone.utc)
    seconds = round(startup_seconds + (finished_at - started_at).total_seconds(), 3)
    marked = False
    if isinstance(failure, BuilderLost) and on_lost is not None:
        with signals_deferred():
            marked = on_lost(failure)
    this = Attempt(
        number=len(attempts) + 1,
        builder=placement.builder,
        builder_name=placement.builder_name,
        path=placement.path,
        outcome=_attempt_outcome(failure),
        reason=failure.message if failure else None,
        cause=failure.cause if isinstance(failure, BuilderLost) else None,
        seconds=seconds,
        marked_unhealthy=marked,
    )
    if retry_lost and isinstance(failure, BuilderLost) and failure.retryable:
        raise AttemptLost(failure, this)
    with signals_deferred():  # after the solve, a second signal must not leave the result half written
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
            image_digest=outcome.image_digest if outcome and failure is None else None,
            config_digest=outcome.config_digest if outcome and failure is None else None,
            image_names=outcome.image_names if outcome else (),
            pushed=bool(failure is None and outcome and request.push and outcome.image_digest),
            started_at=started_at,
            finished_at=finished_at,
            error=failure.message if failure else None,
            exit_code=failure.exit_code if failure else 0,
            warnings=warnings + (outcome.warnings if outcome else ()),
            attempts=(*attempts, this),
            registry_retries=registry_retries,
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


def _attempt_outcome(failure: WarmbuildError | None) -> str:
    if failure is None:
        return "success"
    if isinstance(failure, Cancelled):
        return "cancelled"
    return "lost" if isinstance(failure, BuilderLost) else "failed"


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


@dataclass(frozen=True)
class PoolBuild:
    """What a pool build needs besides its BuildRequest, derived once by `plan_pool_build`."""

    placement: PlacementRequest  # namespace, pool, workload key, holder, wait, lease, fallback, trust
    release_state: ReleaseState  # what `warmbuild release` needs to reach the cluster again
    state_file: Path
    trust: Trust = Trust(False, "")
    tls: TlsFiles | None = None
    cache_ref: str | None = None
    cache_export: str = "auto"
    ephemeral: EphemeralSettings = EphemeralSettings()
    buildctl: str | None = None
    retries: int = 1  # --retries: further attempts on other builders after a builder was lost


def workload_key_of(request: BuildRequest, flags: PoolFlags, environ: Mapping[str, str]) -> WorkloadKey:
    """The build's one WorkloadKey: `--cache-key`, else repository + the Dockerfile the user named
    (under --uv, not the rewritten copy), + the target when `--cache-key-target` asks for it."""
    dockerfile = (flags.named_dockerfile or request.dockerfile).resolve()
    relative = os.path.relpath(dockerfile, request.context)
    repository = "" if flags.cache_key else repository_identity(request.context, dict(environ))
    return derive_workload_key(
        repository, relative, request.target, explicit=flags.cache_key, by_target=flags.key_by_target
    )


def plan_pool_build(request: BuildRequest, flags: PoolFlags, environ: Mapping[str, str] | None = None) -> PoolBuild:
    """Derive from the flags and the CI environment what they leave open: the workload key, who
    holds the slot (host, PID, a random suffix; the CI run's URL), whether the change is trusted,
    the registry cache ref and the ephemeral builder's settings."""
    environ = os.environ if environ is None else environ
    key = workload_key_of(request, flags, environ)
    holder = HolderInfo(
        identity=f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}",
        run_url=ci_run_url(dict(environ)),
        workload_key=key.annotation,
        workload_key_hash=key.hash,
    )
    trust = decide_trust(flags.untrusted, environ)
    cache_ref = flags.cache_ref or default_cache_ref(request.tags)
    if cache_ref is not None:
        validate_image_reference(cache_ref)
    ephemeral = load_ephemeral_settings(
        flags.ephemeral_config, {"image": flags.ephemeral_image, "startup_timeout_seconds": flags.ephemeral_timeout}
    )
    placement = PlacementRequest(
        namespace=flags.namespace,
        pool=flags.pool,
        key=key,
        holder=holder,
        max_wait_seconds=flags.max_wait_seconds,
        lease_seconds=flags.lease_seconds,
        fallback=flags.fallback,
        untrusted=trust.untrusted,
    )
    return PoolBuild(
        placement=placement,
        release_state=ReleaseState(
            namespace=flags.namespace, lease="", holder="", kubeconfig=flags.kubeconfig, context=flags.kube_context
        ),
        state_file=state_file_path(flags.state_file, environ),
        trust=trust,
        tls=flags.tls,
        cache_ref=cache_ref,
        cache_export=flags.cache_export,
        ephemeral=ephemeral,
        buildctl=flags.buildctl,
        retries=flags.retries,
    )


def plan_direct_build(
    address: str,
    tls: TlsFiles | None,
    untrusted: bool | None,
    source: str = "--builder",
    environ: Mapping[str, str] | None = None,
) -> BuilderEndpoint:
    """A direct build's builder, refused for an untrusted change (`source` names where the address
    came from, --builder or WARMBUILD_BUILDER, for the message)."""
    check_direct_builder(decide_trust(untrusted, os.environ if environ is None else environ), source)
    return parse_builder(address, tls)


def run_pool_build(
    request: BuildRequest, options: PoolBuild, broker: SlotBroker, log: TextIO | None = None
) -> BuildResult:
    """Place the build in the pool through `broker`, run it there, give back the slot or delete the
    ephemeral builder whatever happens, and add the build to the pool's history.

    A builder lost before the push began (`AttemptLost`) costs an attempt, not the build: its slot is
    given back, and up to `options.retries` times the build is placed again, never on a builder it
    already lost. Every attempt and its reason are in the result."""
    log = sys.stderr if log is None else log
    started = time.monotonic()
    reported: list[BuildResult] = []
    attempts: list[Attempt] = []
    try:
        while True:
            try:
                return _place_and_build(request, options, broker, log, started, reported, tuple(attempts))
            except AttemptLost as lost:
                attempts.append(lost.attempt)
                print(
                    f"warmbuild: attempt {lost.attempt.number} lost its builder "
                    f"{lost.attempt.builder_name or lost.attempt.builder} ({lost.failure.cause}) before anything "
                    f"was pushed; retry {len(attempts)} of {options.retries} on another builder",
                    file=log,
                    flush=True,
                )
    except WarmbuildError as failure:
        if not reported:  # placement or builder startup failed: no solve ran, but CI still gets a result
            report_unbuilt(
                request, failure, queue_seconds=time.monotonic() - started, log=log, attempts=tuple(attempts)
            )
        raise


def report_unbuilt(
    request: BuildRequest,
    failure: WarmbuildError,
    *,
    queue_seconds: float,
    log: TextIO,
    environ: Mapping[str, str] | None = None,
    attempts: tuple[Attempt, ...] = (),
) -> BuildResult:
    """The result of a build that never reached a builder: written and published like any other.
    After earlier attempts (a retry that found no builder) they are reported, and this one too."""
    environ = os.environ if environ is None else environ
    now = datetime.now(timezone.utc)
    if attempts:
        outcome = "cancelled" if isinstance(failure, Cancelled) else "failed"
        attempts = (*attempts, Attempt(len(attempts) + 1, "", None, "none", outcome, reason=failure.message))
    result = BuildResult(
        status="cancelled" if isinstance(failure, Cancelled) else "failed",
        placement=Placement(builder="", path="none", reason=failure.message),
        timings=Timings(queue_seconds=round(queue_seconds, 3), total_seconds=round(queue_seconds, 3)),
        cache=CacheStats(0, 0),
        started_at=now,
        finished_at=now,
        error=failure.message,
        exit_code=failure.exit_code,
        attempts=attempts,
    )
    with signals_deferred():
        document = result_to_dict(result, __version__)
        write_result_file(result, request.result_file, __version__)
        for publisher in [*publishers_from_env(environ), ReportFilesPublisher.from_env(environ)]:
            publisher.publish(result, document)
    return result


def _place_and_build(
    request: BuildRequest,
    options: PoolBuild,
    broker: SlotBroker,
    log: TextIO,
    started: float,
    reported: list[BuildResult],
    attempts: tuple[Attempt, ...] = (),
) -> BuildResult:
    lost_builders = tuple(dict.fromkeys(a.builder_name for a in attempts if a.builder_name and a.path != "ephemeral"))
    placement = replace(options.placement, avoid=lost_builders)

    def say(line: str) -> None:
        print(f"warmbuild: {line}", file=log, flush=True)

    def held(**what: str | None) -> None:  # what `warmbuild release` in a post step must give back
        write_state(options.state_file, replace(options.release_state, **what))

    def on_created(pod: str) -> None:
        held(lease=pod, holder=placement.holder.identity, ephemeral_pod=pod)

    warnings: tuple[str, ...] = ()
    if placement.untrusted:
        if not attempts:  # said once per build, not per attempt
            say(f"untrusted build ({options.trust.reason}): an ephemeral builder, registry cache import only")
        kept, dropped = exports_allowed(request.cache_exports, untrusted=True)
        if dropped:
            warnings = (f"--cache-to dropped ({len(dropped)} export(s)): an untrusted build never writes a cache",)
            if not attempts:
                say(f"warning: {warnings[0]}")
            request = replace(request, cache_exports=kept)
    title = f"Placement: a slot in pool '{placement.pool}' (namespace {placement.namespace})"
    if attempts:
        title += f", attempt {len(attempts) + 1}"
    grant: Grant | None = None
    keeper = None
    abort = SolveAbort()
    try:  # from the moment a slot is granted, every way out gives it back
        with log_section(log, os.environ, "warmbuild_placement", title):
            grant = broker.acquire(placement, log=say)
        if attempts:
            previous = attempts[-1]
            grant = replace(
                grant,
                reason=f"attempt {len(attempts) + 1}, after {previous.builder_name or previous.builder} was lost "
                f"({previous.cause}): {grant.reason}",
            )
        queue_seconds = time.monotonic() - started  # earlier attempts included
        untrusted = placement.untrusted or grant.untrusted
        if grant.untrusted and not placement.untrusted:
            if not attempts:  # said once per build, not per attempt
                say("the scheduler found this build untrusted: an ephemeral builder, registry cache import only")
            kept, dropped = exports_allowed(request.cache_exports, untrusted=True)
            if dropped:
                warnings = (f"--cache-to dropped ({len(dropped)} export(s)): an untrusted build never writes a cache",)
                if not attempts:
                    say(f"warning: {warnings[0]}")
                request = replace(request, cache_exports=kept)
        cache = cache_options(
            grant.path, options.cache_ref, options.cache_export, request.push, untrusted, request.compression
        )
        request = replace(
            request,
            cache_imports=request.cache_imports + cache.imports,
            cache_exports=request.cache_exports + cache.exports,
        )
        startup_seconds = 0.0
        if grant.path == "ephemeral":
            with log_section(log, os.environ, "warmbuild_startup", "Startup: ephemeral builder"):
                say(f"starting an ephemeral builder: {grant.reason}")
                begun = time.monotonic()
                grant = broker.start_ephemeral(placement, grant, options.ephemeral, on_created)
                if grant.lease.release_token:  # started by the scheduler: released through it, by token
                    held(lease=grant.lease.name, holder=grant.lease.holder, release_token=grant.lease.release_token)
                keeper = broker.keep(grant, on_lost=_aborter(abort), log=say)
                grant = broker.wait_ready(grant, options.ephemeral)
                startup_seconds = time.monotonic() - begun
            via = f" (through the gateway {grant.gateway.address})" if grant.gateway else ""
            say(
                f"ephemeral builder {grant.builder.name} ready at {grant.builder.address}{via} "
                f"after {startup_seconds:.1f}s"
            )
        else:
            held(lease=grant.lease.name, holder=grant.lease.holder, release_token=grant.lease.release_token or None)
            via = f" through the gateway {grant.gateway.address}" if grant.gateway else ""
            say(f"slot {grant.lease.name} on {grant.builder.name} ({grant.builder.address}){via}; {grant.reason}")
            keeper = broker.keep(grant, on_lost=_aborter(abort), log=say)
        built = grant

        def on_result(result: BuildResult) -> None:
            reported.append(result)
            if not result.lost_builder:  # a dead builder's attempt says nothing about the workload
                broker.record(placement, built, result)

        def on_lost(lost: BuilderLost) -> bool:  # an infrastructure failure: out of the rotation
            if built.path == "ephemeral" or not lost.unhealthy:
                return False  # an ephemeral builder is deleted anyway
            marked = broker.mark_unhealthy(placement, built, lost.cause, say)
            if marked:
                say(f"marked builder {built.builder.name} unhealthy ({lost.cause}): placement skips it for a while")
            return marked

        with builder_endpoint(grant, options.tls) as endpoint:
            result = run_build(
                request,
                endpoint,
                Placement(
                    builder=grant.builder.address,
                    path=grant.path,
                    builder_name=grant.builder.name,
                    affine=grant.affine,
                    reason=grant.reason,
                ),
                queue_seconds=queue_seconds,
                startup_seconds=startup_seconds,
                buildctl=options.buildctl,
                log=log,
                abort=abort,
                on_result=on_result,
                warnings=warnings,
                attempts=attempts,
                retry_lost=len(attempts) < options.retries,
                on_lost=on_lost,
            )
        if grant.marked:  # its health check passed: a build succeeded on a builder that carried a mark
            broker.clear_unhealthy(placement, grant)
            say(f"builder {grant.builder.name} built successfully again: its unhealthy mark is removed")
        return result
    finally:
        # Cancellation cleanup: runs to its end even if another signal arrives (signals_deferred).
        with signals_deferred():
            if keeper is not None:
                keeper.stop()
            if grant is not None and grant.lease is not None:
                _give_back(broker, grant, options.state_file, log)


def _aborter(abort: SolveAbort) -> Callable[[str], None]:
    """The keeper's `on_lost`: stop the solve, saying whether the Lease went with its builder pod."""
    return lambda reason: abort.trigger(reason, builder_left=builder_left(reason))


@contextmanager
def builder_endpoint(grant: Grant, tls: TlsFiles | None) -> Iterator[BuilderEndpoint]:
    """How buildctl reaches the granted builder, and what it verifies there.

    Through the gateway (a scheduler grant with a grant certificate): the gateway's address, asked
    for `<builder>.<domain>`, verified with the gateway's CA, the grant certificate as the client's.
    An ephemeral builder: always mTLS with the run's own certificates (files in a private temporary
    directory for the build's duration). A warm or spill builder with TLS files configured: the
    leased builder's own stable DNS name is the server name buildctl verifies, so another pod's
    certificate is refused, and a builder without such a name is refused outright (never a
    plaintext fallback). Without TLS files: plaintext, for a pool that opted out of mTLS."""
    address = grant.builder.address
    if grant.gateway is not None:  # outside the cluster: the gateway, with the grant certificate for this builder
        route = grant.gateway
        yield BuilderEndpoint(
            address=route.address,
            tls=TlsFiles(ca=route.ca, cert=route.cert, key=route.key, server_name=route.server_name),
            via_gateway=True,
        )
        return
    if grant.run_tls is not None:
        with tempfile.TemporaryDirectory(prefix="warmbuild-run-tls-") as directory:
            yield BuilderEndpoint(address=address, tls=write_run_tls(Path(directory), grant.run_tls))
        return
    if tls is None:
        yield BuilderEndpoint(address=address)
        return
    if not grant.builder.server_name:
        raise BuilderUnreachable(
            f"builder {grant.builder.name} has no stable DNS name (spec.hostname and spec.subdomain), so its "
            "certificate cannot be checked: it is not a TLS-capable pool builder (pools are StatefulSets with a headless Service)"
        )
    yield BuilderEndpoint(address=address, tls=replace(tls, server_name=grant.builder.server_name))


def write_run_tls(directory: Path, run_tls: RunTls) -> TlsFiles:
    """The run's CA and client pair as files buildctl reads (owner-only)."""
    paths = {}
    for name, data in (("ca.crt", run_tls.ca_pem), ("tls.crt", run_tls.cert_pem), ("tls.key", run_tls.key_pem)):
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        paths[name] = path
    return TlsFiles(ca=paths["ca.crt"], cert=paths["tls.crt"], key=paths["tls.key"], server_name=run_tls.server_name)


def _give_back(broker: SlotBroker, grant: Grant, state_file: Path, log: TextIO) -> None:
    """Release the slot or delete the ephemeral builder. An API server or scheduler that does not
    answer (restarting) is asked again every second for up to RELEASE_OUTAGE_SECONDS — an ephemeral
    builder left behind would run until `warmbuild gc` — unless a cancel signal is waiting (the
    job must end within seconds then); a refusal right after such an outage (the restarted API
    server's authorizer catching up) gets the same time. On failure the build's outcome stands: the state file stays
    for a `warmbuild release` post step to try again, and a slot frees itself when its lease
    expires (an ephemeral builder is collected by `warmbuild gc`)."""
    deadline = time.monotonic() + RELEASE_OUTAGE_SECONDS
    said = False
    while True:
        try:
            broker.release(grant)
            remove_state(state_file)
            return
        except (ClusterUnavailable, ClusterRefused) as exc:
            # A 401/403 is final, except right after the API was away: a restarted API server
            # refuses everyone until its authorizer has caught up.
            retry = isinstance(exc, ClusterUnavailable) or said
            if retry and time.monotonic() < deadline and not signal_pending():
                if not said:
                    print(
                        f"warmbuild: {exc.message}; asking again every second for up to {RELEASE_OUTAGE_SECONDS:.0f}s",
                        file=log,
                        flush=True,
                    )
                    said = True
                time.sleep(1.0)
                continue
            failure = exc
        except WarmbuildError as exc:
            failure = exc
        break
    if grant.path == "ephemeral":
        what = f"delete ephemeral builder {grant.builder.name} ('warmbuild release' or 'warmbuild gc' will)"
    else:
        what = f"release slot {grant.lease.name} (it frees itself within {grant.lease.duration_seconds}s)"
    print(f"warmbuild: warning: could not {what}: {failure.message}", file=log, flush=True)
