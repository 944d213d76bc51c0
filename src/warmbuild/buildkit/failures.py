"""What a failed solve means, from what buildctl showed of it: pure classification.

The decision is made once, here, from three sources: the step BuildKit marked failed (its error and
log tail), buildctl's own last message (a line that is not JSON: gRPC errors when the daemon is
gone), and how far the progress stream got (whether the image export began). Four kinds matter to
the caller, because each is handled differently:

- `BuildFailed` (exit 1): the build's own fault (a RUN step, a Dockerfile error). Never retried.
- `BuilderLost` (exit 3): the builder went away (connection refused, reset, EOF, gRPC Unavailable)
  or broke for an infrastructure reason (no space left on device, a snapshotter error). A pool build
  runs again on another builder — but only while `push_started` is false: once the image export of a
  pushing build began, part of the image or even its tag may be in the registry, and a second
  builder would push again (a different digest under the same tag), so the build fails with one line.
- `RegistryUnavailable` (exit 5): the push (or a cache export, or the pull of a FROM image) failed on the registry's side —
  connection refused or reset, a 5xx, a timeout, or BuildKit's own upload collision. The solve is
  run again on the SAME builder after a pause (`registry_retry_delay`): every step is cached there,
  so a re-run costs the push, and the blobs that made it are found, not uploaded again.
- `RegistryRefused` (exit 5): 401/403/405, denied. Never retried: only the user can fix it.

"Push started" is judged conservatively, from the client's view: the image export step
(`exporting to image`, which also pushes) has started. Progress arrives in batches, so waiting for a
`pushing layers` status to be seen would miss a push the daemon had already begun.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import BuilderLost, BuildFailed, RegistryRefused, RegistryUnavailable, WarmbuildError
from .phases import is_export_step
from .progress import StepResult

# A push that failed on the registry's side of a race: BuildKit uploads a blob the image and the
# registry cache share twice at once, and the registry sees the two uploads collide.
UPLOAD_COLLISION_MARKERS = (
    "provided digest did not match uploaded content",
    "blob unknown to registry",
    "unexpected commit digest",
)
# The registry (or the way to it) failed: nobody refused anything.
REGISTRY_OUTAGE_MARKERS = (
    "connection refused",
    "connection reset",
    "broken pipe",
    "i/o timeout",
    "tls handshake timeout",
    "timeout awaiting response headers",
    "server closed idle connection",
    "unexpected eof",
    ": eof",
    "no such host",
)
SERVER_ERROR = re.compile(r"\b5\d\d (?:internal server error|bad gateway|service unavailable|gateway timeout|[a-z])")
PUSH_REFUSAL_MARKERS = (
    "failed to push",
    "unexpected status from push",
    "push access denied",
    "insufficient_scope",
    "unauthorized",
    "denied",
    "401 unauthorized",
    "403 forbidden",
    "405 method not allowed",
)
# buildctl lost its gRPC connection to buildkitd (the daemon died, its pod went, the network broke).
# gRPC's words only: a bare "connection refused" in buildctl's last line may be the registry's.
CONNECTION_LOST_MARKERS = (
    "code = unavailable",
    "unavailable:",
    "error reading from server",
    "transport is closing",
    "failed to receive status",
    "connection error: desc",
)
# The builder's machine, not the build: its disk, its snapshotter.
DISK_FULL_MARKERS = ("no space left on device", "disk quota exceeded")
# Read in BuildKit's own error texts only, never in a step's log (a RUN may print anything).
SNAPSHOTTER_MARKERS = (
    "failed to prepare extraction snapshot",
    "failed to create snapshot",
    "failed to commit snapshot",
    "snapshotter",
    "input/output error",
    # The overlay snapshotter's own directory gone under a running daemon (its state volume
    # replaced or wiped): seen by the soak as "failed to walk: … lstat …/runc-overlayfs: no such file".
    "/runc-overlayfs: no such file or directory",
)

# Pauses before each further push of a registry failure (same builder, every step cached): they
# add up to 15 s, enough to ride out a registry restart.
REGISTRY_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
# A failed cache export is only a warning: it is tried again briefly, never for long.
CACHE_EXPORT_RETRY_DELAYS = (1.0, 2.0)

# Steps that read from a registry: resolving a FROM image, pulling its layers. Their connection
# errors and 5xx are the registry's (found by the soak: a registry away during FROM resolution).
PULL_STEP = re.compile(r"^\[internal\] load metadata for |^\[[^\]]*\] FROM ")

IMAGE_EXPORT_PREFIXES = ("exporting to image", "exporting to oci image", "exporting to docker image")


def _has(text: str, markers: Iterable[str]) -> bool:
    lowered = text.lower()
    return any(m in lowered for m in markers)


def is_registry_outage(text: str) -> bool:
    """The registry side failed (connection, timeout, 5xx) or two uploads collided: not a refusal."""
    lowered = text.lower()
    return _has(lowered, UPLOAD_COLLISION_MARKERS + REGISTRY_OUTAGE_MARKERS) or bool(SERVER_ERROR.search(lowered))


def infrastructure_cause(text: str, log_lines: tuple[str, ...] = ()) -> str | None:
    """'disk full' / 'snapshotter error' when BuildKit's error `text` names a fault of the builder's
    machine; a step's `log_lines` count for a full disk only (a RUN that got ENOSPC wrote there)."""
    if _has(text, DISK_FULL_MARKERS) or _has("\n".join(log_lines), DISK_FULL_MARKERS):
        return "disk full"
    if _has(text, SNAPSHOTTER_MARKERS):
        return "snapshotter error"
    return None


def push_started(steps: Iterable[StepResult], push: bool) -> bool:
    """Whether the image export of a pushing build has begun (then a retry could push twice)."""
    return push and any(s.started is not None and s.name.startswith(IMAGE_EXPORT_PREFIXES) for s in steps)


def classify_failure(
    failed: StepResult | None,
    log_tail: tuple[str, ...],
    buildctl_message: str,
    returncode: int,
    tags: tuple[str, ...],
    push: bool,
    pushing: bool,
) -> WarmbuildError:
    """The error of a solve that buildctl ended with `returncode` != 0 (see the module docstring).
    `failed` is the first failed step, `log_tail` its last output lines, `pushing` = `push_started`."""
    names = ", ".join(tags)
    if failed is not None and is_export_step(failed.name):
        error = failed.error or buildctl_message
        cause = infrastructure_cause(error)
        if cause is not None:
            return _lost(f"{cause} on the builder in step '{failed.name}': {error}", cause, pushing)
        if is_registry_outage(error):
            what = (
                f"the push of {names}" if push and not failed.name.startswith("exporting cache") else "the cache export"
            )
            return RegistryUnavailable(f"the registry failed {what}: {error}")
        if push and _has(error, PUSH_REFUSAL_MARKERS):
            return RegistryRefused(f"the registry refused the push of {names}: {error}")
        return BuildFailed(f"step '{failed.name}' failed: {error}")
    if failed is not None:
        cause = infrastructure_cause(failed.error or "", log_tail)
        if cause is not None:
            return _lost(f"{cause} on the builder in step '{failed.name}': {failed.error}", cause, pushing)
        if PULL_STEP.match(failed.name) and is_registry_outage(failed.error or ""):
            return RegistryUnavailable(f"the registry failed the pull in step '{failed.name}': {failed.error}")
        return BuildFailed(f"step '{failed.name}' failed: {failed.error}", log_tail=log_tail)
    message = buildctl_message.removeprefix("error: ") or "no message"  # the error line reads as one
    cause = infrastructure_cause(message)
    if cause is not None:
        return _lost(f"{cause} on the builder: {message}", cause, pushing)
    if push and "push" in message.lower():
        if is_registry_outage(message):
            return RegistryUnavailable(f"the registry failed the push of {names}: {message}")
        if _has(message, PUSH_REFUSAL_MARKERS):
            return RegistryRefused(f"the registry refused the push of {names}: {message}")
    if _has(message, CONNECTION_LOST_MARKERS):
        return _lost(f"lost the builder during the build: {message}", "connection lost", pushing)
    if "deadline exceeded" in message.lower():  # the builder, or something it waited for: not marked
        lost = _lost(f"the builder stopped answering during the build: {message}", "not answering", pushing)
        lost.unhealthy = False
        return lost
    return BuildFailed(f"buildctl exited with status {returncode}: {message}")


def _lost(message: str, cause: str, pushing: bool) -> BuilderLost:
    if pushing:
        message = (
            f"{message} — after the image push had started, so it is not retried (another builder would push "
            "the tag a second time); rerun the job"
        )
    return BuilderLost(message, cause=cause, push_started=pushing)


def registry_retry_delay(
    failure: WarmbuildError | None, ignored_export_errors: tuple[str, ...], tries: int
) -> float | None:
    """Seconds to wait before solving again on the same builder, or None: a registry-side push
    failure is retried along REGISTRY_RETRY_DELAYS; a skipped cache export (the build succeeded) that
    failed on the registry's side along the shorter CACHE_EXPORT_RETRY_DELAYS; nothing else."""
    if isinstance(failure, RegistryUnavailable):
        delays = REGISTRY_RETRY_DELAYS
    elif failure is None and any(is_registry_outage(e) for e in ignored_export_errors):
        delays = CACHE_EXPORT_RETRY_DELAYS
    else:
        return None
    return delays[tries] if tries < len(delays) else None
