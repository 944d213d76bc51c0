"""Where a build runs: its affine warm builder, another warm builder, or an ephemeral one.

Each round reads the pool (Ready builders, their slot Leases) and asks the policy (`policy.decide`)
what to do with the estimates from the pool's build history: take the affine builder's free slot;
wait for it; take a free slot on the next builder of the key's bounded-load ranking (spill); start
an ephemeral builder; or give up. Waiting re-decides every round, so a wait that turns out longer
than expected can still end in a spill or an ephemeral builder.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from typing import Callable

from .affinity import preference_order, rank_builders
from ..kube.client import KubeClient
from ..kube.views import LeaseView
from ..errors import ClusterError, NoSlotAvailable
from .history import BuildRecord, key_hash, read_history
from .leases import DEFAULT_LEASE_SECONDS, HolderInfo, SlotLease, list_pool_leases, try_acquire_slot
from .policy import Decision, Situation, decide, estimate_paths, estimate_slot_wait
from .membership import Builder, discover_builders

POLL_SECONDS = 0.5
HISTORY_REFRESH_SECONDS = 30.0


@dataclass(frozen=True)
class PlacementRequest:
    namespace: str
    pool: str
    workload_key: str
    holder: HolderInfo
    max_wait_seconds: float = 60.0
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    fallback: str = "wait"  # auto | wait | ephemeral | fail; "wait" never answers ephemeral
    untrusted: bool = False


@dataclass(frozen=True)
class Grant:
    """Where the build goes, and why. `lease`/`builder` are None for an ephemeral build."""

    path: str  # warm (the affine builder) | spill (another warm builder) | ephemeral
    lease: SlotLease | None
    builder: Builder | None
    affine: bool
    affine_builder: str | None
    waited_seconds: float
    reason: str


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
) -> Grant:
    started = time.monotonic()
    key = key_hash(request.workload_key)
    holder = request.holder if request.holder.workload_key_hash else replace(request.holder, workload_key_hash=key)
    history: tuple[BuildRecord, ...] = ()
    history_read_at = None
    history_warned = False
    last_action = None
    while True:
        waited = time.monotonic() - started
        if request.fallback == "auto" and (history_read_at is None or time.monotonic() - history_read_at > HISTORY_REFRESH_SECONDS):
            history_read_at = time.monotonic()
            try:
                history = read_history(client, request.namespace, request.pool)
            except ClusterError as exc:
                # The history only sharpens estimates: without it the priors decide.
                if not history_warned:
                    log(f"build history unavailable, estimating from priors: {exc.message}")
                    history_warned = True
        estimates = estimate_paths(history, key)
        builders = discover_builders(client, request.namespace, request.pool)
        by_name = {b.name: b for b in builders}
        affine_name = preference_order(request.workload_key, by_name)[0] if builders else None
        leases = list_pool_leases(client, request.namespace, request.pool) if builders else {}

        if affine_name is not None and not request.untrusted:
            held = try_acquire_slot(client, request.namespace, request.pool, by_name[affine_name], holder, leases, request.lease_seconds)
            if held is not None:
                suffix = f" after waiting {waited:.1f}s" if waited >= 0.05 else ""
                return Grant("warm", held, by_name[affine_name], True, affine_name, round(waited, 3), f"affine builder {affine_name}{suffix}")

        now = client.server_now()
        in_flight = in_flight_by_builder(leases, builders, now)
        spill_order = [n for n in rank_builders(request.workload_key, {b.name: b.slots for b in builders}, in_flight) if n != affine_name]
        spill_free = any(in_flight[n] < by_name[n].slots for n in spill_order)
        situation = Situation(
            affine_builder=affine_name or "-",
            affine_free=False,
            affine_wait_seconds=estimate_slot_wait(affine_holders(leases, affine_name, now), history) if affine_name else 0.0,
            spill_free=spill_free,
            waited_seconds=waited,
            max_wait_seconds=request.max_wait_seconds,
            fallback=request.fallback,
            untrusted=request.untrusted,
            warm_builders=len(builders),
        )
        decision: Decision = decide(situation, estimates)

        if decision.action == "spill":
            for name in spill_order:
                held = try_acquire_slot(client, request.namespace, request.pool, by_name[name], holder, leases, request.lease_seconds)
                if held is not None:
                    reason = decision.reason.replace("spilled", f"spilled to {name}")
                    return Grant("spill", held, by_name[name], False, affine_name, round(waited, 3), reason)
            # Lost every race for the free slots we saw: look again.
        elif decision.action == "ephemeral":
            return Grant("ephemeral", None, None, False, affine_name, round(waited, 3), decision.reason)
        elif decision.action == "fail":
            if not builders and waited < request.max_wait_seconds:
                pass  # builders may be starting: keep looking until the wait is used up
            else:
                hint = "raise --max-wait, allow --fallback auto|ephemeral, or add builders"
                if not builders:
                    hint = "check the builder StatefulSet (warmbuild pool status)"
                raise NoSlotAvailable(f"pool '{request.pool}' in namespace {request.namespace}: {decision.reason}: {hint}")
        elif decision.action == "wait" and last_action != "wait":
            log(f"{decision.reason.rsplit('; ', 1)[0]}; waiting up to {max(0.0, request.max_wait_seconds - waited):.0f}s for a slot")
        last_action = decision.action
        sleep(min(POLL_SECONDS * (0.5 + random.random()), max(0.0, request.max_wait_seconds - waited) + 0.01))
