"""Where a build runs: its affine warm builder, another warm builder, or an ephemeral one.

Each round reads the pool (Ready builders, their slot Leases) and asks the policy
(`policy.placement_round`, the same round the simulator runs) what to do with the estimates from
the pool's build history (`history.PoolHistory`): take the affine builder's free slot;
wait for it; take a free slot on the next builder of the key's bounded-load ranking (spill); start
an ephemeral builder; or give up. Waiting re-decides every round, so a wait that turns out longer
than expected can still end in a spill or an ephemeral builder.

How a round reads the pool is a seam (`PoolReader`): `LivePool` lists pods and Leases every round
(a CI runner placing its one build); the scheduler passes a snapshot kept by one shared watch of
the pool (`pool.watch.PoolWatch`), so its many waiting callers cost no reads. Slots are taken by
compare-and-swap either way, so a snapshot a moment old loses a race, never a slot.

An API server that does not answer (restarting, or etcd restarting behind it: refused, reset,
timed out, 5xx, 429 — `ClusterUnavailable`) is an outage, not a verdict (`_Outage`): placement says
so once, reads the pool again every second, says when it answers again, and ends only when
--max-wait is used up, with one line naming the last error (exit 6). A refusal (403, 401, a bad
certificate) still ends it at once — except right after an outage, when a restarted API server
refuses everyone until its authorizer has caught up: refusals then get REFUSED_GRACE_SECONDS. A slot write whose answer the outage swallowed may have been
committed: once the API answers, a Lease of that builder naming this placement's holder identity
(unique to it) is taken as granted, not left held until it expires.

Before the policy sees the pool, builders out of the rotation are set aside (`policy.out_of_rotation`):
those marked unhealthy within the cool-down (`pool.health`, read from the same Lease listing) and
those this build already lost on an earlier attempt (`PlacementRequest.avoid`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

from ..errors import ClusterRefused, ClusterUnavailable, NoSlotAvailable
from ..kube.client import KubeClient
from ..kube.views import LeaseView
from .health import health_marks
from .history import PoolHistory
from .leases import DEFAULT_LEASE_SECONDS, HolderInfo, SlotLease, list_pool_leases, try_acquire_slot
from .membership import Builder, discover_builders
from .policy import (
    POLL_SECONDS,
    HealthMark,
    RoundInputs,
    estimate_paths,
    estimate_slot_wait,
    out_of_rotation,
    placement_round,
)
from .run_certs import RunTls
from .workload import WorkloadKey

T = TypeVar("T")
OUTAGE_RETRY_SECONDS = 1.0  # while the API server does not answer, placement reads the pool again this often
REFUSED_GRACE_SECONDS = 15.0  # 401/403 right after an outage: a restarted API server's authorizer catching up


@dataclass(frozen=True)
class PlacementRequest:
    namespace: str
    pool: str
    key: WorkloadKey
    holder: HolderInfo
    max_wait_seconds: float = 60.0
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    fallback: str = "wait"  # auto | wait | ephemeral | fail; "wait" never answers ephemeral
    untrusted: bool = False
    avoid: tuple[str, ...] = ()  # builders this build already lost (a retry): never placed there again


@dataclass(frozen=True)
class Grant:
    """Where the build goes, and why. An ephemeral grant has no `lease`/`builder` until the broker
    starts its pod (`SlotBroker.start_ephemeral`): then the pod's run Lease and the pod."""

    path: str  # warm (the affine builder) | spill (another warm builder) | ephemeral
    lease: SlotLease | None
    builder: Builder | None
    affine: bool
    affine_builder: str | None
    waited_seconds: float
    reason: str
    requested_at: datetime | None = None  # API-server time placement began (for the history record)
    run_tls: RunTls | None = None  # an ephemeral builder's per-run CA, client pair and server name
    untrusted: bool = False  # the scheduler found the caller untrusted (its grant or verified claims)
    marked: bool = False  # the builder carries an unhealthy mark past its cool-down: a success clears it
    gateway: GatewayRoute | None = None  # through the gateway: its address and the grant certificate's files


@dataclass(frozen=True)
class GatewayRoute:
    """How a runner outside the cluster reaches its granted builder: the gateway's address, the name
    to ask it for, and files in the job's private directory (the gateway's CA, the grant certificate,
    the runner's own key). The certificate file is replaced when a renewal brings a fresh one."""

    address: str  # tcp://HOST:PORT
    server_name: str
    ca: Path
    cert: Path
    key: Path


class PoolReader(Protocol):
    def read(self) -> tuple[tuple[Builder, ...], dict[str, LeaseView]]:
        """The pool's usable builders and its slot Leases (name → view), as of now or a moment ago."""


@dataclass(frozen=True)
class LivePool:
    """Lists the pool's pods and Leases for every round."""

    client: KubeClient
    namespace: str
    pool: str

    def read(self) -> tuple[tuple[Builder, ...], dict[str, LeaseView]]:
        builders = discover_builders(self.client, self.namespace, self.pool)
        return builders, list_pool_leases(self.client, self.namespace, self.pool) if builders else {}


def in_flight_by_builder(leases: dict[str, LeaseView], builders: tuple[Builder, ...], server_now) -> dict[str, int]:
    by_name = {b.name: 0 for b in builders}
    for lease in leases.values():
        if lease.builder in by_name and not lease.is_free(server_now):
            by_name[lease.builder] += 1
    return by_name


def affine_holders(leases: dict[str, LeaseView], builder: str, server_now) -> list[tuple[str, float]]:
    """(workload key hash, seconds held) for each busy slot of `builder`: the hash as its holder
    stored it (of the whole key; the key's text on the Lease is capped)."""
    return [
        (lease.workload_key_hash, max(0.0, lease.held_seconds(server_now) or 0.0))
        for lease in leases.values()
        if lease.builder == builder and not lease.is_free(server_now)
    ]


def acquire_build_slot(
    client: KubeClient,
    request: PlacementRequest,
    log: Callable[[str], None] = lambda _line: None,
    sleep: Callable[[float], None] = time.sleep,
    history: PoolHistory | None = None,
    reader: PoolReader | None = None,
) -> Grant:
    """Rounds of `policy.placement_round` over the pool as it is now, until one yields a slot, an
    ephemeral grant, or NoSlotAvailable. `history` is the pool's (read only with --fallback auto,
    the one fallback that weighs estimates); `reader` how a round sees the pool (default: listing)."""
    started = time.monotonic()
    requested_at = client.server_now()
    history = history or PoolHistory(client, request.namespace, request.pool)
    reader = reader or LivePool(client, request.namespace, request.pool)
    grant = _place(client, request, log, sleep, history, reader, started)
    return replace(grant, requested_at=requested_at)


def _place(
    client: KubeClient,
    request: PlacementRequest,
    log: Callable[[str], None],
    sleep: Callable[[float], None],
    history: PoolHistory,
    reader: PoolReader,
    started: float,
) -> Grant:
    last_action = None
    outage = _Outage(request, log, sleep, started)
    reader = outage.patient(reader)
    while True:
        waited = time.monotonic() - started
        records = history.recent(log) if request.fallback == "auto" else ()
        inputs = RoundInputs(
            estimates=estimate_paths(records, request.key.hash),
            waited_seconds=waited,
            max_wait_seconds=request.max_wait_seconds,
            fallback=request.fallback,
            untrusted=request.untrusted,
        )
        listed, leases = reader.read()
        now = client.server_now()
        builders, marks = _rotation(listed, leases, request.avoid, now)
        by_name = {b.name: b for b in builders}
        capacities = {b.name: b.slots for b in builders}
        in_flight = in_flight_by_builder(leases, builders, now)

        def affine_wait(name: str, leases=leases, now=now, records=records) -> float:  # this round's view
            return estimate_slot_wait(affine_holders(leases, name, now), records)

        round_ = placement_round(request.key.value, capacities, in_flight, inputs, affine_wait)
        if round_.action == "take-affine":
            held = _take(client, request, by_name[round_.affine], leases, outage)
            if held is not None:
                suffix = f" after waiting {waited:.1f}s" if waited >= 0.05 else ""
                return Grant(
                    "warm",
                    held,
                    by_name[round_.affine],
                    True,
                    round_.affine,
                    round(waited, 3),
                    f"affine builder {round_.affine}{suffix}",
                    marked=round_.affine in marks,
                )
            # Lost the race for the affine slot: this round goes on as if it were busy.
            round_ = placement_round(
                request.key.value,
                capacities,
                {**in_flight, round_.affine: capacities[round_.affine]},
                inputs,
                affine_wait,
                affine=round_.affine,
            )
        decision = round_.decision
        if round_.action == "spill":
            for name in round_.targets:
                held = _take(client, request, by_name[name], leases, outage)
                if held is not None:
                    reason = decision.reason.replace("spilled", f"spilled to {name}")
                    return Grant(
                        "spill",
                        held,
                        by_name[name],
                        False,
                        round_.affine,
                        round(waited, 3),
                        reason,
                        marked=name in marks,
                    )
            # Lost every race for the free slots we saw: look again.
        elif round_.action == "ephemeral":
            return Grant("ephemeral", None, None, False, round_.affine, round(waited, 3), decision.reason)
        elif round_.action == "fail":
            if not builders and waited < request.max_wait_seconds:
                pass  # builders may be starting: keep looking until the wait is used up
            else:
                hint = "raise --max-wait, allow --fallback auto|ephemeral, or add builders"
                if not builders and listed:
                    hint = (
                        f"all {len(listed)} ready builders are out of the rotation (unhealthy, or lost by an "
                        "earlier attempt of this build; see warmbuild pool status)"
                    )
                elif not builders:
                    hint = (
                        f"check that namespace {request.namespace} exists and the builder StatefulSet "
                        "runs there (warmbuild pool status)"
                    )
                raise NoSlotAvailable(
                    f"pool '{request.pool}' in namespace {request.namespace}: {decision.reason}: {hint}"
                )
        elif round_.action == "wait" and last_action != "wait":
            log(
                f"{decision.reason.rsplit('; ', 1)[0]}; waiting up to {max(0.0, request.max_wait_seconds - waited):.0f}s for a slot"
            )
        last_action = round_.action
        sleep(min(POLL_SECONDS * (0.5 + random.random()), max(0.0, request.max_wait_seconds - waited) + 0.01))


def _rotation(
    builders: tuple[Builder, ...], leases: dict[str, LeaseView], avoid: tuple[str, ...], now: datetime
) -> tuple[tuple[Builder, ...], dict[str, HealthMark]]:
    """The builders this round may use (`policy.out_of_rotation` decides) and the marks they carry."""
    marks = health_marks(leases, builders)
    skipped = out_of_rotation((b.name for b in builders), marks, avoid, now)
    return tuple(b for b in builders if b.name not in skipped), marks


def _take(
    client: KubeClient, request: PlacementRequest, builder: Builder, leases: dict[str, LeaseView], outage: _Outage
) -> SlotLease | None:
    try:
        return try_acquire_slot(
            client, request.namespace, request.pool, builder, request.holder, leases, request.lease_seconds
        )
    except ClusterUnavailable as exc:
        # The write may have been committed before the answer was lost: look, once the API answers.
        outage.failed(exc)
        listed = outage.call(lambda: list_pool_leases(client, request.namespace, request.pool))
        return _written_before(request, listed, builder, client.server_now())


def _written_before(
    request: PlacementRequest, leases: dict[str, LeaseView], builder: Builder, now: datetime
) -> SlotLease | None:
    """A slot of `builder` this placement holds already: a Lease naming its holder identity."""
    for lease in leases.values():
        if lease.holder == request.holder.identity and lease.builder == builder.name and not lease.is_free(now):
            return SlotLease(
                namespace=request.namespace,
                name=lease.name,
                builder=builder.name,
                holder=lease.holder,
                transitions=lease.transitions,
                resource_version=lease.resource_version,
                duration_seconds=lease.duration_seconds,
                acquired_at=now,
            )
    return None


class _Outage:
    """Placement through an API-server or etcd restart: `call` retries a read every second while the
    API does not answer, with one line when it stops and one when it answers again, and ends with one
    clear error (exit 6) once --max-wait is used up."""

    def __init__(
        self, request: PlacementRequest, log: Callable[[str], None], sleep: Callable[[float], None], started: float
    ):
        self.request, self.log, self.sleep, self.started = request, log, sleep, started
        self.since: float | None = None  # when the API stopped answering (None: it answers)
        self.refused_at: float | None = None  # when refusals after an outage began

    def patient(self, reader: PoolReader) -> PoolReader:
        return _PatientReader(reader, self)

    def call(self, read: Callable[[], T]) -> T:
        while True:
            try:
                answer = read()
            except ClusterUnavailable as exc:
                self.failed(exc)
                self._pause()
                continue
            except ClusterRefused as exc:
                # Right after an outage, a restarted API server refuses everyone until its authorizer
                # has caught up (seen on the testbed: 403 for a second or two before /readyz): a short grace.
                now = time.monotonic()
                self.refused_at = self.refused_at or now
                if self.since is None or now - self.refused_at > REFUSED_GRACE_SECONDS:
                    raise
                self.failed(ClusterUnavailable(exc.message))
                self._pause()
                continue
            self.refused_at = None
            if self.since is not None:
                self.log(
                    f"the Kubernetes API answers again after {time.monotonic() - self.since:.0f}s; placement goes on"
                )
                self.since = None
            return answer

    def _pause(self) -> None:
        waited = time.monotonic() - self.started
        self.sleep(min(OUTAGE_RETRY_SECONDS, max(0.0, self.request.max_wait_seconds - waited) + 0.01))

    def failed(self, exc: ClusterUnavailable) -> None:
        """Note one unanswered request; raise the placement's error when --max-wait is used up."""
        request, now = self.request, time.monotonic()
        if now - self.started >= request.max_wait_seconds:
            silent = f" for {now - self.since:.0f}s" if self.since is not None else ""
            raise ClusterUnavailable(
                f"pool '{request.pool}' in namespace {request.namespace}: no placement within --max-wait "
                f"{request.max_wait_seconds:.0f}s, the Kubernetes API did not answer{silent}: {exc.message}"
            ) from None
        if self.since is None:
            self.since = now
            self.log(
                f"the Kubernetes API is not answering ({exc.message}); placement retries for up to "
                f"{request.max_wait_seconds - (now - self.started):.0f}s (--max-wait)"
            )


@dataclass(frozen=True)
class _PatientReader:
    reader: PoolReader
    outage: _Outage

    def read(self) -> tuple[tuple[Builder, ...], dict[str, LeaseView]]:
        return self.outage.call(self.reader.read)
