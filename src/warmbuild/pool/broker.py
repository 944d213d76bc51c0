"""Who hands out build slots: the Leases directly, or the scheduler service in front of them.

`run_pool_build` talks to a `SlotBroker` and does not care which: `DirectLeases` wraps the lease and
placement functions for a runner that holds Lease RBAC itself; `warmbuild.scheduler.client.
SchedulerClient` asks the scheduler over HTTPS for a runner that does not. Both return the same
`Grant`, keep the slot alive with a `Keeper` that calls `on_lost` once when the slot is fenced, and
release only a slot that is still theirs.
"""

from __future__ import annotations

from typing import Callable, Protocol

from ..kube.client import KubeClient
from .leases import LeaseKeeper, SlotLease, release_slot, renew_slot
from .placement import Grant, PlacementRequest, acquire_build_slot


class Keeper(Protocol):
    """Renews a held slot in the background until stopped."""

    lost_reason: str | None

    def stop(self) -> None: ...


class SlotBroker(Protocol):
    def acquire(self, request: PlacementRequest, log: Callable[[str], None]) -> Grant:
        """A held slot, or NoSlotAvailable (exit 7) when none frees within the request's wait."""

    def renew(self, lease: SlotLease) -> SlotLease:
        """Extend the hold; LeaseLost (exit 8) when another holder has the slot now."""

    def keep(self, grant: Grant, on_lost: Callable[[str], None]) -> Keeper:
        """Start renewing every lease-duration/3; `on_lost(reason)` once if the slot is lost."""

    def release(self, grant: Grant) -> bool:
        """Give the slot back if it is still ours; True only if this call released it."""


class DirectLeases:
    """The runner's own credentials on the pool's Lease objects (needs Lease RBAC)."""

    def __init__(self, client: KubeClient):
        self.client = client

    def acquire(self, request: PlacementRequest, log: Callable[[str], None] = lambda _line: None) -> Grant:
        return acquire_build_slot(self.client, request, log=log)

    def renew(self, lease: SlotLease) -> SlotLease:
        return renew_slot(self.client, lease)

    def keep(self, grant: Grant, on_lost: Callable[[str], None]) -> Keeper:
        return LeaseKeeper(self.client, grant.lease, on_lost=on_lost).start()

    def release(self, grant: Grant) -> bool:
        return release_slot(self.client, grant.lease.namespace, grant.lease.name, grant.lease.holder)
