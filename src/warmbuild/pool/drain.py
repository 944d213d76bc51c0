"""`warmbuild drain`: a builder leaving the pool lets the builds it holds finish first.

It runs as the buildkitd container's preStop hook (deploy/helm/warmbuild), so the kubelet sends
buildkitd SIGTERM only after it returns:

1. mark the own pod `warmbuild.dev/draining: "true"`: pool discovery skips it from now on (it
   already skips a pod with a deletionTimestamp; the mark also covers a drain run by hand);
2. wait until every slot Lease of this pod (`<pod>-slot-<i>`, label `warmbuild.dev/builder=<pod>`)
   is free: released (no holder) or expired by the API server's clock, never this machine's;
   and at least `settle` seconds after the mark, so a CI step that listed the pool just before
   cannot take a slot after the last look;
3. return: exit 0, or exit 10 after `timeout` seconds with slots still held (keep the timeout
   below the pod's terminationGracePeriodSeconds, or the kubelet kills the hook instead), or when
   the Leases could not be read for `api_grace` seconds in a row (API server unreachable, Role
   gone). Credentials rejected outright (the ServiceAccount was deleted: `helm uninstall`) end the
   wait at once: the whole pool is going away.

The pod is named by POD_NAME / POD_NAMESPACE (downward API) unless --pod / --namespace say
otherwise. Credentials as for every command (cluster.connect): in the pod, its service account,
which needs pods get/patch on the pod itself and leases get/list/watch. Marking is best effort:
without the patch permission the drain still waits for the slots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ..errors import ClusterError, DrainTimedOut
from ..kube.client import KubeClient, KubeNotFound
from ..kube.names import BUILDER_LABEL, DRAINING_ANNOTATION, leases_path, pods_path
from ..kube.views import LeaseView, parse_lease

DEFAULT_TIMEOUT_SECONDS = 3570.0  # the chart's default grace period (3600 s) minus time for buildkitd to stop
DEFAULT_SETTLE_SECONDS = 3.0
DEFAULT_POLL_SECONDS = 1.0
# How long the slot Leases may stay unreadable before the drain gives up: longer than an API server
# restart, short enough that a lost Role does not hold a deletion up for the whole timeout.
DEFAULT_API_GRACE_SECONDS = 15.0
REMINDER_SECONDS = 30.0  # repeat the "still waiting" line this often


@dataclass(frozen=True)
class HeldSlot:
    """A slot Lease that is still in use: who holds it and until when (server time) unless renewed."""

    name: str
    holder: str
    run_url: str
    expires: datetime | None


@dataclass(frozen=True)
class DrainResult:
    pod: str
    namespace: str
    marked: bool  # the draining annotation was set (False: pod gone, or no patch permission)
    waited_seconds: float
    slots_seen_held: tuple[str, ...]  # every slot found held at some point while draining


def held_slots(leases: list[LeaseView], pod_uid: str | None, server_now: datetime) -> list[HeldSlot]:
    """The slot Leases of this pod that are held and not expired by `server_now`.

    A Lease owned by an earlier pod of the same name (another uid) is not this builder's: whoever
    holds it builds on a buildkitd that is gone already, and the next acquirer deletes it.
    """
    held = []
    for lease in leases:
        if pod_uid and lease.owner_uid and lease.owner_uid != pod_uid:
            continue
        if lease.is_free(server_now):
            continue
        held.append(HeldSlot(name=lease.name or "?", holder=lease.holder, run_url=lease.run_url, expires=lease.expiry))
    return sorted(held, key=lambda slot: slot.name)


def credentials_revoked(error: ClusterError) -> bool:
    """The API server rejected the token itself (HTTP 401, as cluster.KubeClient words it): in a
    builder pod that means its ServiceAccount was deleted, which `helm uninstall` does together with
    the StatefulSet. No answer about the slots will come any more."""
    return "rejected the credentials" in error.message


def mark_draining(
    client: KubeClient, namespace: str, pod: str, log: Callable[[str], None]
) -> tuple[bool, str | None, bool]:
    """Annotate the pod as draining. Returns (marked, pod uid or None, pod exists)."""
    patch = {"metadata": {"annotations": {DRAINING_ANNOTATION: "true"}}}
    try:
        body = client.request(
            "PATCH", pods_path(namespace, pod), body=patch, content_type="application/merge-patch+json"
        ).body
        return True, (body.get("metadata") or {}).get("uid"), True
    except KubeNotFound:
        return False, None, False
    except ClusterError as exc:
        log(f"could not mark {pod} draining ({exc.message}); waiting for its slots anyway")
    try:
        body = client.request("GET", pods_path(namespace, pod)).body
        return False, (body.get("metadata") or {}).get("uid"), True
    except KubeNotFound:
        return False, None, False
    except ClusterError:
        return False, None, True


def list_builder_leases(client: KubeClient, namespace: str, pod: str) -> list[LeaseView]:
    # A consistent LIST (no resourceVersion=0): a slot taken a moment ago must be seen.
    response = client.request("GET", leases_path(namespace), query={"labelSelector": f"{BUILDER_LABEL}={pod}"})
    return [parse_lease(item) for item in response.body.get("items") or ()]


def _describe(slots: list[HeldSlot]) -> str:
    parts = []
    for slot in slots:
        who = slot.run_url or slot.holder or "?"
        parts.append(f"{slot.name} ({who})")
    return ", ".join(parts)


def drain_builder(
    client: KubeClient,
    namespace: str,
    pod: str,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    settle: float = DEFAULT_SETTLE_SECONDS,
    poll: float = DEFAULT_POLL_SECONDS,
    api_grace: float = DEFAULT_API_GRACE_SECONDS,
    log: Callable[[str], None] = lambda _line: None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> DrainResult:
    """Mark the builder draining and wait until none of its slots is held; DrainTimedOut after `timeout`."""
    started = monotonic()
    marked, uid, exists = mark_draining(client, namespace, pod, log)
    if not exists:
        log(f"pod {namespace}/{pod} is gone already: nothing to drain")
        return DrainResult(pod, namespace, False, 0.0, ())
    if marked:
        log(f"marked {namespace}/{pod} draining: no new builds start on it")
    seen: dict[str, None] = {}
    last_report: tuple[str, ...] | None = None
    last_report_at = started
    failing_since: float | None = None
    while True:
        try:
            held = held_slots(list_builder_leases(client, namespace, pod), uid, client.server_now())
            failing_since = None
        except ClusterError as exc:
            if credentials_revoked(exc):
                # The service account is gone: the release is being uninstalled, and with it the pool.
                log(f"not waiting: this builder's credentials were revoked ({exc.message})")
                return DrainResult(pod, namespace, marked, monotonic() - started, tuple(seen))
            now = monotonic()
            if failing_since is None:
                failing_since = now
                log(f"could not list the slot leases: {exc.message}")
            if now - failing_since >= api_grace:
                raise DrainTimedOut(
                    f"{namespace}/{pod}: the slot leases could not be read for {now - failing_since:.0f}s "
                    f"({exc.message}); not waiting any longer"
                ) from None
            held = None
        elapsed = monotonic() - started
        if held is not None:
            for slot in held:
                seen.setdefault(slot.name, None)
            names = tuple(slot.name for slot in held)
            if held and (names != last_report or monotonic() - last_report_at >= REMINDER_SECONDS):
                log(f"waiting for {len(held)} slot(s) to be released: {_describe(held)}")
                last_report, last_report_at = names, monotonic()
            if not held and elapsed >= settle:
                if seen:
                    log(f"all slots released after {elapsed:.1f}s; buildkitd may stop")
                else:
                    log("no slot in use; buildkitd may stop")
                return DrainResult(pod, namespace, marked, elapsed, tuple(seen))
        if elapsed >= timeout:
            still = _describe(held) if held else "unknown (the leases could not be read)"
            raise DrainTimedOut(
                f"{namespace}/{pod}: slots still held after {timeout:.0f}s: {still}; buildkitd stops now and "
                "those builds fail (raise builder.terminationGracePeriodSeconds / drain.timeoutSeconds for longer builds)"
            )
        # Nothing held: look again when the settle time is up. Held, or unreadable: every `poll`.
        wait = min(poll, max(0.0, settle - elapsed)) if held == [] else poll
        sleep(max(0.05, min(wait, max(0.0, timeout - elapsed))))


# ------------------------------------------------------------------------------------------ CLI


def add_drain_arguments(parser) -> None:
    """Flags of `warmbuild drain` (cli registers the subcommand)."""
    import os

    env = os.environ.get
    parser.add_argument("--pod", default=env("POD_NAME"), help="the builder pod (env POD_NAME, from the downward API)")
    parser.add_argument("--namespace", default=env("POD_NAMESPACE"), help="its namespace (env POD_NAMESPACE)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="give up after this many seconds (keep it below terminationGracePeriodSeconds)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE_SECONDS,
        help="wait at least this long after marking the pod draining (default 3)",
    )
    parser.add_argument(
        "--poll", type=float, default=DEFAULT_POLL_SECONDS, help="seconds between looks at the slot leases"
    )
    parser.add_argument(
        "--api-grace",
        type=float,
        default=DEFAULT_API_GRACE_SECONDS,
        help="give up when the slot leases cannot be read for this long (default 15)",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    parser.add_argument("--kube-context", dest="kube_context", default=None, help="kubeconfig context")


def command_drain(args) -> int:
    import sys

    from ..errors import InputError
    from ..kube.client import connect

    if not args.pod or not args.namespace:
        raise InputError(
            "drain needs the pod: set POD_NAME and POD_NAMESPACE (downward API) or pass --pod and --namespace"
        )
    if args.timeout < 0 or args.settle < 0 or args.api_grace < 0 or args.poll <= 0:
        raise InputError("--timeout, --settle and --api-grace must be 0 or more seconds, --poll more than 0")

    def log(line: str) -> None:
        print(f"warmbuild drain: {line}", file=sys.stderr, flush=True)

    client = connect(args.kubeconfig, args.kube_context)
    drain_builder(
        client,
        args.namespace,
        args.pod,
        timeout=args.timeout,
        settle=args.settle,
        poll=args.poll,
        api_grace=args.api_grace,
        log=log,
    )
    return 0
