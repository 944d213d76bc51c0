"""Build slots as coordination.k8s.io/v1 Leases: acquire, renew, release, fencing.

One Lease per slot, named `<builder pod>-slot-<i>` and owned by the builder pod, so the garbage
collector removes it with the pod. Every write is a compare-and-swap on resourceVersion: of many
CI jobs racing for a slot, exactly one update succeeds and the rest get 409 and move on.

A Lease is free when it has no holder, or when its last renewal + its duration has passed by the
API server's clock (never the runner's). Its transition count counts acquisitions; with the
Lease name it is the fencing token: a holder that finds another holder, or another token, stops.

A Lease left by an earlier pod of the same name (a StatefulSet pod re-created) is adopted, never
deleted: the same compare-and-swap takes it over and points its ownerReference at the current pod,
so a CI step needs no delete on Leases (least privilege).

Leases are read only through `kube.views.parse_lease`; the bodies written (held, renewed, released)
are built here, and `ephemeral` builds its run Lease with the same helpers. A held Lease names its
holder's run URL, the workload key's text (capped) and the hash of the whole key: readers compare
the stored hash, since a hash of capped text would not match a long key's.

Renewal (`SlotKeeper`): every duration/3 the keeper re-reads the Lease and writes a new renewTime by
compare-and-swap. The build is aborted only when its slot is actually lost — `renew_slot` raises
LeaseLost when the Lease names another holder, another transition count or no holder, or is gone
(its builder left). Anything else (API server unreachable, 5xx, a timeout, 401/403) is an outage:
one warning, retries every min(1 s, duration/3), the build goes on. A Lease that expired by the
server's clock while the server was down but still names us with the same transition count is
simply renewed when the server answers again: nobody could write it meanwhile, and whoever takes
it after the recovery bumps the transition count, which the next renewal sees. Each renew call,
all its requests together, ends within `renew_timeout` (duration/4, at most 10 s), so a hung
request cannot hold back the next renewal: while the server answers, renewals are at most
duration/3 + duration/4 apart, well inside the duration.

What fencing still guarantees, read as a racing or cut-off holder would use it:
- One holder per slot in the API server: every grant and renewal is a CAS on resourceVersion and
  a takeover bumps leaseTransitions, so a stale holder can never renew over a new one, and release
  clears only its own hold.
- A holder that lost its slot stops its solve when its keeper next reaches the server (LeaseLost →
  the solve is interrupted). Right after an outage a waiting job may take an expired-while-down
  Lease before our next retry; the overlap on the builder is then at most one retry (1 s) plus one
  renew timeout plus buildctl's cancel grace. (Judging expiry by when a reader last saw the Lease
  change, as client-go's leader election does, would close that window; that is placement's, and
  left to the issue on placement during an API-server restart.)
- A holder cut off from the API server while others still reach it (a partition, a revoked
  identity) cannot learn that it lost the slot. Its keeper gives up after `outage_limit` — 120 s,
  or two lease durations if longer — without one answered renewal, and aborts the build. So a
  holder that lost its slot keeps a solve running on the builder for at most outage_limit -
  duration + one retry + one renew timeout after the slot became free to take (110 s with the
  default 15 s lease), plus buildctl's cancel grace; before, that was up to a renew interval plus a
  renew stuck in its 15 s timeout, and every build on the pool died with a 15 s outage. The overlap is one extra solve on a builder of the same pool
  (a pool is one trust domain: the build could have run there anyway), never another job's data.

A slot the scheduler took for a caller also carries the SHA-256 of a release token that only that
caller learned: the scheduler keeps no state, so the Lease is where it finds the hash again, and
`renew_slot`/`release_slot` given a `token_hash` refuse (`NotYourSlot`) unless it matches (compared
in constant time). Direct mode has no token: its Leases carry no hash and nothing checks one.
"""

from __future__ import annotations

import hmac
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from ..errors import ClusterError, LeaseLost, WarmbuildError
from ..kube.client import KubeConflict, KubeNotFound, format_micro_time
from ..kube.names import (
    BUILDER_LABEL,
    POOL_LABEL,
    RELEASE_TOKEN_HASH_ANNOTATION,
    RUN_URL_ANNOTATION,
    WORKLOAD_KEY_ANNOTATION,
    WORKLOAD_KEY_ANNOTATION_MAX,
    WORKLOAD_KEY_HASH_ANNOTATION,
    leases_path,
    slot_lease_name,
)
from ..kube.views import DEFAULT_LEASE_SECONDS, LeaseView, parse_lease
from .membership import Builder

HOLDER_ANNOTATIONS = (
    RUN_URL_ANNOTATION,
    WORKLOAD_KEY_ANNOTATION,
    WORKLOAD_KEY_HASH_ANNOTATION,
    RELEASE_TOKEN_HASH_ANNOTATION,
)

RENEW_RETRY_SECONDS = 1.0  # after a failed renewal: soon, so a recovered API server is noticed early
RENEW_TIMEOUT_MAX_SECONDS = 10.0
RENEW_OUTAGE_LIMIT_SECONDS = 120.0  # without one answered renewal for this long, give the slot up
LEASE_DELETED = "was deleted (its builder left the pool)"  # LeaseLost's words when the Lease is gone


class NotYourSlot(Exception):
    """The slot is held by this holder name, but the caller does not have its release token."""


class KubeResponseLike(Protocol):
    body: dict


class LeaseApi(Protocol):
    """All the slot functions need of the API server: KubeClient has this shape, and so does the
    in-memory fake of the unit tests (tests/unit/conftest.py)."""

    def request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        query: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
    ) -> KubeResponseLike: ...

    def server_now(self) -> datetime: ...


@dataclass(frozen=True)
class HolderInfo:
    """Who holds a slot, recorded on the Lease for `warmbuild pool status` and placement."""

    identity: str  # unique per acquisition
    run_url: str = ""
    workload_key: str = ""  # stored capped at WORKLOAD_KEY_ANNOTATION_MAX characters
    workload_key_hash: str = ""  # of the whole key: what readers compare
    release_token_hash: str = ""  # scheduler only: SHA-256 (hex) of the acquirer's release token


@dataclass(frozen=True)
class SlotLease:
    """A slot this process holds."""

    namespace: str
    name: str
    builder: str
    holder: str
    transitions: int
    resource_version: str
    duration_seconds: int
    acquired_at: datetime  # server time
    # Scheduler grants only: the secret that proves this caller took the slot. Never in a repr or log.
    release_token: str = field(default="", repr=False, compare=False)

    @property
    def fencing_token(self) -> str:
        return f"{self.name}/{self.transitions}"


def list_pool_leases(client: LeaseApi, namespace: str, pool: str) -> dict[str, LeaseView]:
    """Lease name → view, for every slot Lease of the pool."""
    response = client.request("GET", leases_path(namespace), query={"labelSelector": f"{POOL_LABEL}={pool}"})
    return {view.name: view for view in map(parse_lease, response.body.get("items") or ())}


# --------------------------------------------------------------- writing Lease bodies (the only place)


def holder_annotations(holder: HolderInfo) -> dict[str, str]:
    """The annotations a held Lease carries about its holder (removed again on release)."""
    annotations = {
        RUN_URL_ANNOTATION: holder.run_url,
        WORKLOAD_KEY_ANNOTATION: holder.workload_key[:WORKLOAD_KEY_ANNOTATION_MAX],
        WORKLOAD_KEY_HASH_ANNOTATION: holder.workload_key_hash,
    }
    if holder.release_token_hash:
        annotations[RELEASE_TOKEN_HASH_ANNOTATION] = holder.release_token_hash
    return annotations


def _without_holder_annotations(meta: dict) -> dict:
    return {k: v for k, v in (meta.get("annotations") or {}).items() if k not in HOLDER_ANNOTATIONS}


def held_spec(previous: dict, holder: HolderInfo, duration: int, now: datetime, transitions: int) -> dict:
    """A Lease spec held by `holder` from `now` (server time); `previous` keeps unknown fields."""
    spec = dict(previous)
    spec.update(
        holderIdentity=holder.identity,
        leaseDurationSeconds=duration,
        acquireTime=format_micro_time(now),
        renewTime=format_micro_time(now),
        leaseTransitions=transitions,
    )
    return spec


def new_lease_body(
    namespace: str,
    name: str,
    labels: dict[str, str],
    owner_pod: str,
    owner_uid: str,
    holder: HolderInfo,
    duration: int,
    now: datetime,
) -> dict:
    """A Lease held by `holder`, owned by a Pod (the garbage collector removes it with the pod)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": holder_annotations(holder),
            "ownerReferences": [_pod_owner(owner_pod, owner_uid)],
        },
        "spec": held_spec({}, holder, duration, now, transitions=1),
    }


def _taken_over_body(lease: LeaseView, holder: HolderInfo, duration: int, now: datetime) -> dict:
    body = lease.body
    meta = dict(body.get("metadata") or {})
    # The previous holder's annotations go, all of them: a token hash left behind would let the
    # previous holder release the new one's slot.
    meta["annotations"] = {**_without_holder_annotations(meta), **holder_annotations(holder)}
    spec = held_spec(body.get("spec") or {}, holder, duration, now, lease.transitions + 1)
    return dict(body, metadata=meta, spec=spec)


def _adopted_body(lease: LeaseView, builder: Builder, holder: HolderInfo, duration: int, now: datetime) -> dict:
    """A Lease of an earlier pod of the same name, taken over and owned by the current pod."""
    body = _taken_over_body(lease, holder, duration, now)
    meta = dict(body["metadata"], ownerReferences=[_pod_owner(builder.name, builder.uid)])
    return dict(body, metadata=meta)


def _pod_owner(pod: str, uid: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}


def _renewed_body(lease: LeaseView, now: datetime) -> dict:
    return dict(lease.body, spec=dict(lease.body.get("spec") or {}, renewTime=format_micro_time(now)))


def _released_body(lease: LeaseView) -> dict:
    body = lease.body
    spec = {
        k: v for k, v in (body.get("spec") or {}).items() if k not in ("holderIdentity", "acquireTime", "renewTime")
    }
    meta = dict(body.get("metadata") or {})
    meta["annotations"] = _without_holder_annotations(meta)
    return dict(body, metadata=meta, spec=spec)


# ------------------------------------------------------------------------------------ the slot rules


def _granted(
    namespace: str, builder: Builder, body: dict, holder: HolderInfo, duration: int, now: datetime
) -> SlotLease:
    view = parse_lease(body)
    return SlotLease(
        namespace=namespace,
        name=view.name,
        builder=builder.name,
        holder=holder.identity,
        transitions=view.transitions,
        resource_version=view.resource_version,
        duration_seconds=duration,
        acquired_at=now,
    )


def try_acquire_slot(
    client: LeaseApi,
    namespace: str,
    pool: str,
    builder: Builder,
    holder: HolderInfo,
    known: Mapping[str, LeaseView],
    duration: int = DEFAULT_LEASE_SECONDS,
) -> SlotLease | None:
    """Take any free slot of `builder`, or return None. `known` is a recent listing of the pool's Leases.

    The slots are tried from an offset of the holder's own (random per acquisition), not from slot 0:
    acquirers racing for one builder from the same listing then mostly write different Leases
    instead of all losing the first one's compare-and-swap to one winner, one 409 each, in turn."""
    offset = zlib.crc32(holder.identity.encode()) % builder.slots if builder.slots else 0
    for slot in (*range(offset, builder.slots), *range(offset)):
        name = slot_lease_name(builder.name, slot)
        lease = known.get(name)
        now = client.server_now()
        try:
            if lease is None:
                body = new_lease_body(
                    namespace,
                    name,
                    {POOL_LABEL: pool, BUILDER_LABEL: builder.name},
                    builder.name,
                    builder.uid,
                    holder,
                    duration,
                    now,
                )
                created = client.request("POST", leases_path(namespace), body=body).body
                return _granted(namespace, builder, created, holder, duration, now)
            if lease.owner_uid != builder.uid:
                # Left from an earlier pod of the same name: adopted for the current pod by the same
                # compare-and-swap (its holder, if any, held a slot of a pod that is gone). CI never
                # needs to delete a Lease; the garbage collector and `warmbuild gc` do that.
                updated = _adopted_body(lease, builder, holder, duration, now)
            elif not lease.is_free(now):
                continue
            else:
                updated = _taken_over_body(lease, holder, duration, now)
            replaced = client.request("PUT", leases_path(namespace, name), body=updated).body
            return _granted(namespace, builder, replaced, holder, duration, now)
        except (KubeConflict, KubeNotFound):
            continue  # someone else won this slot, or it vanished: try the next one
    return None


def builder_left(reason: str) -> bool:
    """Whether a lost slot's reason says its Lease was deleted: the builder pod went, taking it along."""
    return LEASE_DELETED in reason


def renew_interval(duration: float) -> float:
    """Seconds between renewals of a lease of `duration` seconds."""
    return max(0.5, duration / 3)


def renew_timeout(duration: float) -> float:
    """Seconds one renew call may take in all: under a third of the duration, so it cannot delay the
    next renewal past the expiry."""
    return min(RENEW_TIMEOUT_MAX_SECONDS, max(0.25, duration / 4))


def outage_limit(duration: float) -> float:
    """Seconds without one answered renewal after which a keeper gives the slot up (see the module docstring)."""
    return max(RENEW_OUTAGE_LIMIT_SECONDS, 2 * duration)


def token_matches(lease: LeaseView, token_hash: str) -> bool:
    """Whether `token_hash` is the one stored on the Lease (constant time; never true for an empty one)."""
    return bool(lease.release_token_hash) and hmac.compare_digest(lease.release_token_hash, token_hash)


def renew_slot(
    client: LeaseApi, held: SlotLease, timeout: float | None = None, token_hash: str | None = None
) -> SlotLease:
    """Extend the lease; raise LeaseLost if another holder has it (fencing), or ClusterError; and
    NotYourSlot if `token_hash` is given and is not the one stored on the Lease.

    With `timeout`, all the requests of this call end within that many seconds together.
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    path = leases_path(held.namespace, held.name)
    for _ in range(5):
        try:
            lease = parse_lease(client.request("GET", path, timeout=left()).body)
        except KubeNotFound:
            raise LeaseLost(f"slot lease {held.name} {LEASE_DELETED}") from None
        if not lease.holder or lease.holder != held.holder or lease.transitions != held.transitions:
            raise LeaseLost(f"slot lease {held.name} is now held by {lease.holder or 'nobody'}")
        if token_hash is not None and not token_matches(lease, token_hash):
            raise NotYourSlot(f"not your slot: {held.name} was not granted with this release token")
        try:
            body = _renewed_body(lease, client.server_now())
            updated = parse_lease(client.request("PUT", path, body=body, timeout=left()).body)
            # the builder and duration as the Lease says: the scheduler renews knowing only the name
            return replace(
                held,
                resource_version=updated.resource_version,
                builder=held.builder or updated.builder,
                duration_seconds=updated.duration_seconds,
            )
        except KubeConflict:
            continue  # changed between our read and write: read again and re-check the holder
        except KubeNotFound:
            raise LeaseLost(f"slot lease {held.name} {LEASE_DELETED}") from None
    raise ClusterError(f"could not renew slot lease {held.name}: it kept changing under us")


def release_slot(client: LeaseApi, namespace: str, name: str, holder: str, token_hash: str | None = None) -> bool:
    """Give the slot back if `holder` still has it. Idempotent: True only if this call released it.
    With `token_hash`, NotYourSlot unless it is the one stored on the Lease."""
    for _ in range(5):
        try:
            lease = parse_lease(client.request("GET", leases_path(namespace, name)).body)
        except KubeNotFound:
            return False
        if not lease.holder or lease.holder != holder:
            return False
        if token_hash is not None and not token_matches(lease, token_hash):
            raise NotYourSlot(f"not your slot: {name} was not granted with this release token")
        try:
            client.request("PUT", leases_path(namespace, name), body=_released_body(lease))
            return True
        except KubeConflict:
            continue
        except KubeNotFound:
            return False
    raise ClusterError(f"could not release slot lease {name}: it kept changing under us")


class SlotKeeper:
    """Renews a held slot in a background thread; calls `on_lost` once when the slot is lost.

    `renew(slot, timeout)` returns the renewed slot or raises: LeaseLost when the slot is lost (then
    `on_lost` runs and the keeper ends); any other WarmbuildError is an outage, retried until
    `outage_limit` has passed without one answered renewal (see the module docstring). `log` gets
    one line when renewals start failing and one when they succeed again, never one per retry.
    """

    def __init__(
        self,
        renew: Callable[[SlotLease, float], SlotLease],
        held: SlotLease,
        on_lost: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = lambda _line: None,
        wait: Callable[[float], bool] | None = None,
    ):
        self.renew = renew
        self.held = held
        self.on_lost = on_lost
        self.clock = clock
        self.log = log
        self.lost_reason: str | None = None
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait  # True once stopped; the unit tests move fake time in it
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.run, name=f"renew-{held.name}", daemon=True)

    def start(self) -> SlotKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:  # after this, `on_lost` is never called: the build is over, its slot given back
            self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def run(self) -> None:
        """Renew until stopped or lost (the thread's body)."""
        duration = self.held.duration_seconds
        interval, timeout, limit = renew_interval(duration), renew_timeout(duration), outage_limit(duration)
        renewed_at = self.clock()
        failing = False
        pause = interval
        while not self._wait(pause):
            attempted = self.clock()
            try:
                self.held = self.renew(self.held, timeout)
            except LeaseLost as exc:
                self._lose(exc.message)
                return
            except WarmbuildError as exc:
                silent = self.clock() - renewed_at
                if silent >= limit:
                    self._lose(
                        f"could not renew slot lease {self.held.name} for {silent:.0f}s, so it may be "
                        f"another build's now: {exc.message}"
                    )
                    return
                if not failing:
                    self.log(
                        f"could not renew slot lease {self.held.name} ({exc.message}); retrying every "
                        f"{min(interval, RENEW_RETRY_SECONDS):g}s for up to {limit:.0f}s, the build goes on"
                    )
                    failing = True
                pause = min(interval, RENEW_RETRY_SECONDS)
                continue
            if failing:
                self.log(f"renewed slot lease {self.held.name} again after {attempted - renewed_at:.0f}s")
                failing = False
            renewed_at, pause = attempted, interval

    def _lose(self, reason: str) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self.lost_reason = reason
        self.on_lost(reason)


class LeaseKeeper(SlotKeeper):
    """A SlotKeeper that renews the Lease directly on the API server."""

    def __init__(
        self,
        client: LeaseApi,
        held: SlotLease,
        on_lost: Callable[[str], None],
        log: Callable[[str], None] = lambda _line: None,
    ):
        super().__init__(lambda slot, timeout: renew_slot(client, slot, timeout), held, on_lost, log=log)
