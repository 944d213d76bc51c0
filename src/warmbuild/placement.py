"""Where a build runs: the affine warm builder, another warm builder, or a clear refusal.

First version of the policy: try the workload's affine builder (first in its rendezvous order);
while it is busy, wait up to `max_wait` for one of its slots; after that, take a slot on the next
builder in the key's bounded-load ranking that has one. The ephemeral fallback comes later.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

from .affinity import preference_order, rank_builders
from .cluster import KubeClient
from .errors import NoSlotAvailable
from .leases import DEFAULT_LEASE_SECONDS, HolderInfo, SlotLease, lease_is_free, list_pool_leases, try_acquire_slot
from .pool import Builder, discover_builders

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class PlacementRequest:
    namespace: str
    pool: str
    workload_key: str
    holder: HolderInfo
    max_wait_seconds: float = 60.0
    lease_seconds: int = DEFAULT_LEASE_SECONDS


@dataclass(frozen=True)
class Grant:
    """A slot held for one build, and how it was chosen."""

    lease: SlotLease
    builder: Builder
    affine: bool
    affine_builder: str
    path: str  # warm (the affine builder) | spill (another warm builder)
    waited_seconds: float
    reason: str


def in_flight_by_builder(leases: dict[str, dict], builders: tuple[Builder, ...], server_now) -> dict[str, int]:
    by_name = {b.name: 0 for b in builders}
    for lease in leases.values():
        builder = (lease["metadata"].get("labels") or {}).get("warmbuild.dev/builder")
        if builder in by_name and not lease_is_free(lease, server_now):
            by_name[builder] += 1
    return by_name


def acquire_build_slot(
    client: KubeClient,
    request: PlacementRequest,
    log: Callable[[str], None] = lambda _line: None,
    sleep: Callable[[float], None] = time.sleep,
) -> Grant:
    started = time.monotonic()
    announced_wait = False
    while True:
        waited = time.monotonic() - started
        builders = discover_builders(client, request.namespace, request.pool)
        if not builders:
            if waited >= request.max_wait_seconds:
                raise NoSlotAvailable(
                    f"pool '{request.pool}' in namespace {request.namespace} has no ready builders: "
                    "check the builder StatefulSet (warmbuild pool status)"
                )
        else:
            by_name = {b.name: b for b in builders}
            affine_name = preference_order(request.workload_key, by_name)[0]
            leases = list_pool_leases(client, request.namespace, request.pool)
            held = try_acquire_slot(
                client, request.namespace, request.pool, by_name[affine_name], request.holder, leases, request.lease_seconds
            )
            if held is not None:
                reason = f"affine builder {affine_name}" + (f" after waiting {waited:.1f}s" if waited >= 0.05 else "")
                return Grant(held, by_name[affine_name], True, affine_name, "warm", round(waited, 3), reason)
            if waited >= request.max_wait_seconds:
                in_flight = in_flight_by_builder(leases, builders, client.server_now())
                capacities = {b.name: b.slots for b in builders}
                for name in rank_builders(request.workload_key, capacities, in_flight):
                    if name == affine_name:
                        continue
                    held = try_acquire_slot(
                        client, request.namespace, request.pool, by_name[name], request.holder, leases, request.lease_seconds
                    )
                    if held is not None:
                        reason = f"affine builder {affine_name} busy for {waited:.1f}s; spilled to {name}"
                        return Grant(held, by_name[name], False, affine_name, "spill", round(waited, 3), reason)
                raise NoSlotAvailable(
                    f"all {sum(b.slots for b in builders)} slots of pool '{request.pool}' stayed busy for "
                    f"{waited:.0f}s: raise --max-wait, or add builders"
                )
            if not announced_wait:
                log(f"affine builder {affine_name} is busy; waiting up to {request.max_wait_seconds:.0f}s for a slot")
                announced_wait = True
        sleep(min(POLL_SECONDS * (0.5 + random.random()), max(0.0, request.max_wait_seconds - waited) + 0.01))
