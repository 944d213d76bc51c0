"""What the scheduler does for a caller, on top of placement and leases; no HTTP here.

Stateless: everything lives in the Leases, so any replica can answer any request. An acquire is a
long-poll: it runs `placement.acquire_build_slot` with the caller's remaining affinity wait, and a
`sleep` that ends the request at the poll's end with a "wait" answer, so the caller polls again
(with how long it has waited so far) instead of one HTTP request hanging for minutes. The last poll
of a wait is the one that spills, or answers "fallback".

Holder identities are `HINT/UNIQUE@USERNAME`: the caller's user name from TokenReview is part of the
Lease's holder, so `pool status` shows who holds a slot, and only that user can renew or release it.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import LeaseLost, NoSlotAvailable
from ..kube.client import KubeClient
from ..kube.names import leases_path
from ..pool.leases import DEFAULT_LEASE_SECONDS, HolderInfo, SlotLease, release_slot, renew_slot, renew_timeout
from ..pool.placement import Grant, PlacementRequest, acquire_build_slot
from ..pool.status import PoolStatus, read_pool_status
from ..pool.workload import WorkloadKey
from .auth import Caller
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


@dataclass(frozen=True)
class AcquireAnswer:
    decision: str  # granted | wait (poll again) | fallback (no slot within the wait)
    waited_seconds: float  # in all, earlier polls included
    reason: str
    grant: Grant | None = None


class NotYours(Exception):
    """The slot's holder was issued to another caller (HTTP 403)."""


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
    ):
        self.client = client
        self.namespace = namespace
        self.metrics = metrics
        self.max_poll_seconds = max_poll_seconds
        self.clock = clock
        self._stopping = threading.Event()

    def stop_waiting(self) -> None:
        """Shutting down: every long-poll answers "wait" now, so its caller polls another replica."""
        self._stopping.set()

    def acquire(self, caller: Caller, ask: AcquireAsk) -> AcquireAnswer:
        remaining, poll = poll_plan(ask, self.max_poll_seconds)
        started = self.clock()
        deadline = started + poll
        waits: list[str] = []

        def sleep(seconds: float) -> None:
            left = deadline - self.clock()
            if left <= 0 or self._stopping.is_set():
                raise _PollEnded
            self._stopping.wait(min(seconds, left))

        key = WorkloadKey(ask.workload_key, source="caller")
        holder = HolderInfo(
            identity=holder_identity(caller.username, ask.holder_hint, uuid.uuid4().hex[:10]),
            run_url=ask.run_url,
            workload_key=key.annotation,
            workload_key_hash=key.hash,
        )
        request = PlacementRequest(
            self.namespace, ask.pool, key, holder, remaining, ask.lease_seconds, fallback=ask.fallback
        )

        def note_wait(line: str) -> None:  # placement says it waits: count this acquirer as queued demand
            if not waits:
                self.metrics.add_waiting(ask.pool, +1)
            waits.append(line)

        try:
            grant = acquire_build_slot(self.client, request, log=note_wait, sleep=sleep)
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
        return AcquireAnswer("granted", round(waited, 3), grant.reason, replace(grant, waited_seconds=round(waited, 3)))

    def _check_owner(self, caller: Caller, holder: str) -> None:
        if holder_owner(holder) != caller.username:
            self.metrics.auth_failures.labels("403").inc()
            raise NotYours(f"slot holder {holder!r} was not issued to {caller.username}")

    def renew(self, caller: Caller, lease_name: str, holder: str, transitions: int) -> SlotLease:
        """Extend the caller's hold; LeaseLost if someone else has the slot now (fencing)."""
        self._check_owner(caller, holder)
        held = SlotLease(
            self.namespace, lease_name, "", holder, transitions, "", DEFAULT_LEASE_SECONDS, self.client.server_now()
        )
        try:
            # bounded like the runner's own renewal: a hung API server answers 503 soon, not after 15 s per thread
            renewed = renew_slot(self.client, held, renew_timeout(DEFAULT_LEASE_SECONDS))
        except LeaseLost:
            self.metrics.renewals.labels("lost").inc()
            raise
        self.metrics.renewals.labels("renewed").inc()
        return renewed

    def release(
        self,
        caller: Caller,
        lease_name: str,
        holder: str,
        pool: str = "",
        path: str = "",
        held_seconds: float | None = None,
    ) -> bool:
        self._check_owner(caller, holder)
        released = release_slot(self.client, self.namespace, lease_name, holder)
        if released and pool in self.metrics.pools and path and held_seconds is not None:
            self.metrics.build_seconds.labels(pool, path).observe(held_seconds)
        return released

    def pool_status(self, pool: str) -> PoolStatus:
        return read_pool_status(self.client, self.namespace, pool)

    def ready(self) -> bool:
        """The API server answers us (and we are not shutting down)."""
        if self._stopping.is_set():
            return False
        self.client.request("GET", leases_path(self.namespace), query={"limit": "1"})
        return True
