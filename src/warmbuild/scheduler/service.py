"""What the scheduler does for a caller, on top of placement and leases; no HTTP here.

Stateless: everything lives in the Leases, so any replica can answer any request. An acquire is a
long-poll: it runs `placement.acquire_build_slot` with the caller's remaining affinity wait, and a
`sleep` that ends the request at the poll's end with a "wait" answer, so the caller polls again
(with how long it has waited so far) instead of one HTTP request hanging for minutes. The last poll
of a wait is the one that spills, or answers "fallback".

Holder identities are `HINT/UNIQUE@USERNAME`: the caller's user name from TokenReview is part of the
Lease's holder, so `pool status` shows an admin who holds a slot. The user name does not prove
ownership: the default grant is one service account for every CI job. Each grant therefore comes
with a random release token that only its caller learns; the Lease keeps its SHA-256, and renew and
release need the token (`leases.NotYourSlot` → 403 "not your slot" otherwise).

Untrusted callers (a grant's `trusted: false`, or verified CI claims of a fork) never get a warm or
spill slot: when the scheduler is given ephemeral settings it starts an ephemeral builder for them
(`start_ephemeral`, the same pod, run certificate Secret and run Lease a runner with the CI Role
would make, through `pool.broker.DirectLeases`; rootless and labelled untrusted), holds its run Lease
with a release token like a slot, and deletes the pod on release. `ephemeral_status` tells the caller
when the pod is Ready. For a caller behind the gateway (`start_ephemeral(..., gateway=GatewayTrust)`)
the builder's certificates carry the gateway's trust and the grant has no run client pair: no
private key ever leaves the scheduler; the caller's own key and grant certificate reach the pod. Without ephemeral settings an untrusted caller is refused (HTTP 403).

A caller with verified CI claims gets the workload key `pool.workload.scoped_key` makes: its verified
repository, then the part the job chose; never a repository part the job names itself.

Waiting callers read the pool from one shared watch per pool (`pool.watch.PoolWatch`) and wake
when it changes, instead of each listing pods and Leases every round. Per identity, at most
`limits.held_slots` slots at once (0: no cap) — checked before placement on the snapshot, so two
acquires racing may both pass: a soft cap, never an unsafe one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import BuilderStartFailed, ClusterError, LeaseLost, NoSlotAvailable
from ..kube.client import KubeClient, KubeNotFound
from ..kube.names import EPHEMERAL_LABEL, leases_path, pods_path
from ..kube.views import parse_lease
from ..pool.broker import DirectLeases
from ..pool.ephemeral import EphemeralSettings, delete_ephemeral_pod, pod_event_summary, pod_readiness
from ..pool.leases import (
    DEFAULT_LEASE_SECONDS,
    HolderInfo,
    NotYourSlot,
    SlotLease,
    release_slot,
    renew_slot,
    renew_timeout,
    token_matches,
)
from ..pool.placement import Grant, LivePool, PlacementRequest, acquire_build_slot
from ..pool.run_certs import GatewayTrust
from ..pool.status import PoolStatus, read_pool_status
from ..pool.watch import PoolWatch
from ..pool.workload import WorkloadKey, scoped_key
from .auth import Caller, Limits
from .metrics import SchedulerMetrics

MAX_POLL_SECONDS = 30.0
SPILL_GRACE_SECONDS = 2.0  # a poll that ends the wait runs this much longer, so the spill happens in it
_HINT_UNSAFE = re.compile(r"[^A-Za-z0-9._:/-]")


@dataclass(frozen=True)
class AcquireAsk:
    pool: str
    workload_key: str
    max_wait_seconds: float  # how long the caller may wait for its affine builder, in all
    waited_seconds: float = 0.0  # how long it has waited in earlier polls
    poll_seconds: float = MAX_POLL_SECONDS
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    run_url: str = ""
    holder_hint: str = ""
    fallback: str = "wait"  # wait: wait, then spill | fail: spill at once or answer fallback
    key_path: str = ""  # the part of the key the job chose (Dockerfile path and target, or --cache-key)
    avoid_builders: tuple[str, ...] | list[str] = ()  # builders the caller's build already lost


@dataclass(frozen=True)
class AcquireAnswer:
    decision: str  # granted | wait (poll again) | fallback (no slot within the wait)
    waited_seconds: float  # in all, earlier polls included
    reason: str
    grant: Grant | None = None


class NotYours(Exception):
    """The slot's holder was issued to another caller, or the release token is wrong (HTTP 403)."""


class OverLimit(Exception):
    """The caller is at one of its per-identity limits (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def workload_key_for(caller: Caller, ask: AcquireAsk) -> WorkloadKey:
    """A caller with verified CI claims: its verified repository, then the part it chose. Others
    (service accounts: in-cluster identities an operator granted) name their key as they send it."""
    if caller.ci is not None:
        return scoped_key(caller.ci.repository, ask.workload_key, ask.key_path)
    return WorkloadKey(ask.workload_key, source="caller", path=ask.key_path)


@dataclass(frozen=True)
class EphemeralStatus:
    ready: bool
    address: str = ""
    failed: str = ""  # why the pod will never be ready ("" while it may still become ready)


def token_hash(release_token: str) -> str:
    return hashlib.sha256(release_token.encode()).hexdigest()


class _PollEnded(Exception):
    pass


def holder_identity(username: str, hint: str, unique: str) -> str:
    safe_hint = _HINT_UNSAFE.sub("", hint)[:80] or "client"
    return f"{safe_hint}/{unique}@{username}"


def holder_owner(identity: str) -> str:
    """The user name in a holder identity this scheduler issued ('' if it is not one)."""
    hint, at, username = identity.partition("@")  # the hint never contains '@'; a user name may
    return username if at and "/" in hint else ""


def poll_plan(ask: AcquireAsk, max_poll_seconds: float) -> tuple[float, float]:
    """(affinity wait left, length of this poll). The poll in which the wait ends also spills."""
    remaining = max(0.0, ask.max_wait_seconds - ask.waited_seconds)
    poll = min(ask.poll_seconds, max_poll_seconds)
    if remaining <= poll:
        poll = remaining + SPILL_GRACE_SECONDS
    return remaining, poll


def acquisition_outcome(grant: Grant, waited_before: float) -> str:
    if grant.path != "warm":
        return grant.path
    return "affine" if waited_before == 0 and grant.waited_seconds < 0.05 else "wait"


class SlotService:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        metrics: SchedulerMetrics,
        max_poll_seconds: float = MAX_POLL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        limits: Limits = Limits(),
        watch_pools: bool = True,
        ephemeral: EphemeralSettings | None = None,
    ):
        self.client = client
        self.namespace = namespace
        self.metrics = metrics
        self.max_poll_seconds = max_poll_seconds
        self.clock = clock
        self.limits = limits
        self.watch_pools = watch_pools
        self.ephemeral = ephemeral  # None: this scheduler starts no ephemeral builders
        self._stopping = threading.Event()
        self._watches: dict[str, PoolWatch] = {}
        self._watches_lock = threading.Lock()

    def stop_waiting(self) -> None:
        """Shutting down: every long-poll answers "wait" now, so its caller polls another replica."""
        self._stopping.set()
        with self._watches_lock:
            for watch in self._watches.values():
                watch.stop()

    def watch(self, pool: str) -> PoolWatch:
        """The pool's shared watch, started on first use."""
        with self._watches_lock:
            if pool not in self._watches:
                self._watches[pool] = PoolWatch(self.client, self.namespace, pool).start()
            return self._watches[pool]

    def acquire(self, caller: Caller, ask: AcquireAsk) -> AcquireAnswer:
        remaining, poll = poll_plan(ask, self.max_poll_seconds)
        started = self.clock()
        deadline = started + poll
        waits: list[str] = []
        reader = _Watched(self.watch(ask.pool)) if self.watch_pools else _Polled(self.client, self.namespace, ask.pool)
        self._check_held(caller, ask.pool, reader)

        def sleep(seconds: float) -> None:
            left = deadline - self.clock()
            if left <= 0 or self._stopping.is_set():
                raise _PollEnded
            reader.wait(min(seconds, left), self._stopping)

        key = workload_key_for(caller, ask)
        release_token = secrets.token_urlsafe(32)  # only this caller learns it; the Lease keeps its hash
        holder = HolderInfo(
            identity=holder_identity(caller.username, ask.holder_hint, uuid.uuid4().hex[:10]),
            run_url=ask.run_url,
            workload_key=key.annotation,
            workload_key_hash=key.hash,
            release_token_hash=token_hash(release_token),
        )
        request = PlacementRequest(
            self.namespace,
            ask.pool,
            key,
            holder,
            remaining,
            ask.lease_seconds,
            fallback=ask.fallback,
            avoid=tuple(ask.avoid_builders),
        )

        def note_wait(line: str) -> None:  # placement says it waits: count this acquirer as queued demand
            if not waits:
                self.metrics.add_waiting(ask.pool, +1)
            waits.append(line)

        try:
            grant = acquire_build_slot(self.client, request, log=note_wait, sleep=sleep, reader=reader)
        except _PollEnded:
            waited = ask.waited_seconds + self.clock() - started
            return AcquireAnswer("wait", round(waited, 3), waits[0] if waits else "no slot yet")
        except NoSlotAvailable as exc:
            waited = ask.waited_seconds + self.clock() - started
            self.metrics.acquisitions.labels(ask.pool, "fallback").inc()
            self.metrics.wait_seconds.labels(ask.pool, "fallback").observe(waited)
            return AcquireAnswer("fallback", round(waited, 3), exc.message)
        finally:
            if waits:
                self.metrics.add_waiting(ask.pool, -1)
        waited = ask.waited_seconds + grant.waited_seconds
        if grant.lease is None:  # an ephemeral builder: not started by the scheduler (yet); the caller falls back
            self.metrics.acquisitions.labels(ask.pool, "fallback").inc()
            self.metrics.wait_seconds.labels(ask.pool, "fallback").observe(waited)
            return AcquireAnswer("fallback", round(waited, 3), grant.reason)
        self.metrics.acquisitions.labels(ask.pool, acquisition_outcome(grant, ask.waited_seconds)).inc()
        self.metrics.wait_seconds.labels(ask.pool, grant.path).observe(waited)
        lease = replace(grant.lease, release_token=release_token)
        return AcquireAnswer(
            "granted", round(waited, 3), grant.reason, replace(grant, lease=lease, waited_seconds=round(waited, 3))
        )

    def start_ephemeral(self, caller: Caller, ask: AcquireAsk, gateway: GatewayTrust | None = None) -> AcquireAnswer:
        """An ephemeral builder for an untrusted caller: pod (rootless, labelled untrusted), its run
        certificate Secret and run Lease, held with a release token only this caller learns. The
        answer comes at once; the caller asks `ephemeral_status` until the pod is Ready. With
        `gateway` (a caller behind the gateway): the builder accepts the gateway and is verifiable by
        it, and the grant carries no run client pair (`run_tls` None)."""
        if self.ephemeral is None:
            raise ClusterError("this scheduler starts no ephemeral builders (no --ephemeral-config)")
        key = workload_key_for(caller, ask)
        release_token = secrets.token_urlsafe(32)
        holder = HolderInfo(
            identity=holder_identity(caller.username, ask.holder_hint, uuid.uuid4().hex[:10]),
            run_url=ask.run_url,
            workload_key=key.annotation,
            workload_key_hash=key.hash,
            release_token_hash=token_hash(release_token),
        )
        request = PlacementRequest(
            self.namespace, ask.pool, key, holder, 0.0, ask.lease_seconds, fallback="ephemeral", untrusted=True
        )
        reason = "untrusted build: an ephemeral builder with registry cache import only"
        placeholder = Grant("ephemeral", None, None, False, None, 0.0, reason)
        grant = DirectLeases(self.client, gateway=gateway).start_ephemeral(
            request, placeholder, self.ephemeral, lambda _pod: None
        )
        self.metrics.acquisitions.labels(ask.pool, "ephemeral").inc()
        lease = replace(grant.lease, release_token=release_token)
        return AcquireAnswer("granted", round(ask.waited_seconds, 3), reason, replace(grant, lease=lease))

    def ephemeral_status(
        self, caller: Caller, lease_name: str, holder: str, release_token: str, wait_seconds: float
    ) -> EphemeralStatus:
        """Whether the caller's ephemeral builder is Ready (its address), waiting up to `wait_seconds`."""
        self._check_owner(caller, holder)
        try:
            lease = parse_lease(self.client.request("GET", leases_path(self.namespace, lease_name)).body)
        except KubeNotFound:
            return EphemeralStatus(False, failed=f"ephemeral builder {lease_name} is gone (its run Lease was deleted)")
        if lease.holder != holder or not token_matches(lease, token_hash(release_token)):
            raise self._not_yours(
                NotYourSlot(f"not your builder: {lease_name} was not granted with this release token")
            )
        deadline = self.clock() + min(max(wait_seconds, 0.0), self.max_poll_seconds)
        while True:
            try:
                address, failed = pod_readiness(self.client, self.namespace, lease_name)
            except BuilderStartFailed as exc:
                return EphemeralStatus(False, failed=exc.message)
            if address or failed:
                if failed:
                    failed = f"{failed}; {pod_event_summary(self.client, self.namespace, lease_name)}"
                return EphemeralStatus(bool(address), address or "", failed or "")
            if self.clock() >= deadline or self._stopping.is_set():
                return EphemeralStatus(False)
            self._stopping.wait(0.25)

    def _check_held(self, caller: Caller, pool: str, reader: _Watched | _Polled) -> None:
        cap = self.limits.held_slots
        if not cap:
            return
        _builders, leases = reader.read()
        now = self.client.server_now()
        held = sum(
            1 for lease in leases.values() if not lease.is_free(now) and holder_owner(lease.holder) == caller.username
        )
        if held >= cap:
            raise OverLimit(
                f"{caller.username} holds {held} slots of pool '{pool}', the most one identity may hold "
                f"(limits.held_slots {cap}): poll again when one is released",
                retry_after=max(1, round(self.max_poll_seconds / 6)),
            )

    def _check_owner(self, caller: Caller, holder: str) -> None:
        if holder_owner(holder) != caller.username:
            self.metrics.auth_failures.labels("403").inc()
            raise NotYours(f"not your slot: holder {holder!r} was not issued to {caller.username}")

    def _not_yours(self, exc: NotYourSlot) -> NotYours:
        self.metrics.auth_failures.labels("403").inc()
        return NotYours(str(exc))

    def renew(self, caller: Caller, lease_name: str, holder: str, transitions: int, release_token: str) -> SlotLease:
        """Extend the caller's hold; LeaseLost if someone else has the slot now (fencing), NotYours
        without the slot's release token."""
        self._check_owner(caller, holder)
        held = SlotLease(
            self.namespace, lease_name, "", holder, transitions, "", DEFAULT_LEASE_SECONDS, self.client.server_now()
        )
        try:
            # bounded like the runner's own renewal: a hung API server answers 503 soon, not after 15 s per thread
            renewed = renew_slot(
                self.client, held, renew_timeout(DEFAULT_LEASE_SECONDS), token_hash=token_hash(release_token)
            )
        except NotYourSlot as exc:
            raise self._not_yours(exc) from None
        except LeaseLost:
            self.metrics.renewals.labels("lost").inc()
            # Not who holds it now: that is for admins (/status), not for whoever names the slot.
            raise LeaseLost(f"slot lease {lease_name} is no longer held by {holder}") from None
        self.metrics.renewals.labels("renewed").inc()
        if not renewed.builder and self._is_ephemeral_builder(lease_name):
            renewed = replace(renewed, builder=lease_name)  # a run Lease is named after its pod
        return renewed

    def release(
        self,
        caller: Caller,
        lease_name: str,
        holder: str,
        release_token: str,
        pool: str = "",
        path: str = "",
        held_seconds: float | None = None,
    ) -> bool:
        self._check_owner(caller, holder)
        try:
            released = release_slot(self.client, self.namespace, lease_name, holder, token_hash(release_token))
        except NotYourSlot as exc:
            raise self._not_yours(exc) from None
        if released and self._is_ephemeral_builder(lease_name):
            delete_ephemeral_pod(self.client, self.namespace, lease_name)  # its Secret and run Lease go with it
        if released and pool in self.metrics.pools and path and held_seconds is not None:
            self.metrics.build_seconds.labels(pool, path).observe(held_seconds)
        return released

    def _is_ephemeral_builder(self, name: str) -> bool:
        """A run Lease is named after its ephemeral builder pod, which carries the ephemeral label."""
        try:
            pod = self.client.request("GET", pods_path(self.namespace, name)).body
        except KubeNotFound:
            return False
        return ((pod.get("metadata") or {}).get("labels") or {}).get(EPHEMERAL_LABEL) == "true"

    def pool_status(self, pool: str) -> PoolStatus:
        return read_pool_status(self.client, self.namespace, pool)

    def ready(self) -> bool:
        """The API server answers us (and we are not shutting down)."""
        if self._stopping.is_set():
            return False
        self.client.request("GET", leases_path(self.namespace), query={"limit": "1"})
        return True


class _Watched:
    """One acquire's view of the pool's shared watch: reads the snapshot, sleeps until it changes."""

    def __init__(self, watch: PoolWatch):
        self.watch = watch
        self.generation = -1

    def read(self):
        builders, leases, self.generation = self.watch.read()
        return builders, leases

    def wait(self, seconds: float, stopping: threading.Event) -> None:
        if not stopping.is_set():
            self.watch.wait_newer(self.generation, seconds)


class _Polled(LivePool):
    """Without the watch (--no-pool-watch): every round lists the pool."""

    def wait(self, seconds: float, stopping: threading.Event) -> None:
        stopping.wait(seconds)
