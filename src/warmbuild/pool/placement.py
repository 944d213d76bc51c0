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
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ..errors import NoSlotAvailable
from ..kube.client import KubeClient
from ..kube.views import LeaseView
from .history import PoolHistory
from .leases import DEFAULT_LEASE_SECONDS, HolderInfo, SlotLease, list_pool_leases, try_acquire_slot
from .membership import Builder, discover_builders
from .policy import POLL_SECONDS, RoundInputs, estimate_paths, estimate_slot_wait, placement_round
from .run_certs import RunTls
from .workload import WorkloadKey


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
        builders, leases = reader.read()
        by_name = {b.name: b for b in builders}
        capacities = {b.name: b.slots for b in builders}
        now = client.server_now()
        in_flight = in_flight_by_builder(leases, builders, now)

        def affine_wait(name: str, leases=leases, now=now, records=records) -> float:  # this round's view
            return estimate_slot_wait(affine_holders(leases, name, now), records)

        round_ = placement_round(request.key.value, capacities, in_flight, inputs, affine_wait)
        if round_.action == "take-affine":
            held = _take(client, request, by_name[round_.affine], leases)
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
                held = _take(client, request, by_name[name], leases)
                if held is not None:
                    reason = decision.reason.replace("spilled", f"spilled to {name}")
                    return Grant("spill", held, by_name[name], False, round_.affine, round(waited, 3), reason)
            # Lost every race for the free slots we saw: look again.
        elif round_.action == "ephemeral":
            return Grant("ephemeral", None, None, False, round_.affine, round(waited, 3), decision.reason)
        elif round_.action == "fail":
            if not builders and waited < request.max_wait_seconds:
                pass  # builders may be starting: keep looking until the wait is used up
            else:
                hint = "raise --max-wait, allow --fallback auto|ephemeral, or add builders"
                if not builders:
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


def _take(
    client: KubeClient, request: PlacementRequest, builder: Builder, leases: dict[str, LeaseView]
) -> SlotLease | None:
    return try_acquire_slot(
        client, request.namespace, request.pool, builder, request.holder, leases, request.lease_seconds
    )
