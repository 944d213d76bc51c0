"""Who hands out builders: the Leases directly, or the scheduler service in front of them.

`pipeline.run_pool_build` talks to a `SlotBroker` and does not care which: `DirectLeases` wraps the
lease, placement and ephemeral-builder functions for a runner that holds the pool's Role itself;
`warmbuild.scheduler.client.SchedulerClient` asks the scheduler over HTTPS for a runner that does
not. Every path is a `Grant` with one life cycle — acquire, (for an ephemeral grant: start the pod,
then wait until it is ready), keep, release — so the pipeline has one code path:

- warm and spill grants hold a slot Lease; `release` gives it back if it is still theirs;
- an ephemeral grant holds the pod's run Lease and the run's client certificate (`Grant.run_tls`);
  `release` deletes the pod (its Lease and its certificate Secret go with it). One the scheduler
  starts for a runner behind the gateway (`DirectLeases(..., gateway=GatewayTrust)`) has no client
  pair: the builder accepts the gateway, and the runner proves itself to the gateway with a grant
  certificate for its own key.

`keep` renews the grant's Lease every duration/3 and calls `on_lost` once when it is actually lost
(taken over, released by someone else, deleted); an unreachable API server or scheduler is retried
through, with one line to the log (the rule and its bounds: `pool.leases`). The broker that read the
pool's history for placement also records the finished build in it (`record`), and marks a builder
that failed for an infrastructure reason unhealthy (`mark_unhealthy`, `pool.health`) — the direct
broker only: the scheduler's callers have no Lease rights, and the scheduler does not take a
caller's word about a builder (it skips marks written by direct-mode jobs all the same).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from ..errors import WarmbuildError
from ..kube.client import KubeClient
from ..report import BuildResult
from ..signals import signals_deferred
from .ephemeral import (
    EphemeralSettings,
    create_ephemeral_pod,
    create_run_lease,
    create_tls_secret,
    delete_ephemeral_pod,
    ephemeral_pod_manifest,
    new_pod_name,
    run_labels,
    tls_secret_manifest,
    wait_until_ready,
)
from .health import clear_unhealthy, try_mark_unhealthy
from .history import PoolHistory, record_of
from .leases import LeaseKeeper, SlotLease, release_slot, renew_slot
from .membership import Builder
from .placement import Grant, PlacementRequest, acquire_build_slot
from .run_certs import GatewayTrust, make_run_certificates


class Keeper(Protocol):
    """Renews a held Lease in the background until stopped."""

    lost_reason: str | None

    def stop(self) -> None: ...


class SlotBroker(Protocol):
    def acquire(self, request: PlacementRequest, log: Callable[[str], None]) -> Grant:
        """A held slot or an ephemeral grant, or NoSlotAvailable (exit 7) within the request's wait."""

    def start_ephemeral(
        self, request: PlacementRequest, grant: Grant, settings: EphemeralSettings, on_created: Callable[[str], None]
    ) -> Grant:
        """Create the ephemeral builder of an ephemeral grant and its run Lease; `on_created(pod)` runs
        as soon as the pod exists. The returned grant holds the run Lease; its builder is not ready yet."""

    def wait_ready(self, grant: Grant, settings: EphemeralSettings) -> Grant:
        """The grant with its ephemeral builder's address, once the pod is Ready (BuilderStartFailed)."""

    def renew(self, lease: SlotLease, timeout: float | None = None) -> SlotLease:
        """Extend the hold within `timeout` seconds; LeaseLost (exit 8) when another holder has the slot now."""

    def keep(self, grant: Grant, on_lost: Callable[[str], None], log: Callable[[str], None]) -> Keeper:
        """Start renewing every lease-duration/3; `on_lost(reason)` once if the Lease is lost; `log` hears
        when renewals start failing and when they work again."""

    def release(self, grant: Grant) -> bool:
        """Give the slot back if it is still ours, or delete the ephemeral builder; True if this call did."""

    def record(self, request: PlacementRequest, grant: Grant, result: BuildResult) -> None:
        """Add a finished build to the pool's history (never fails the build)."""

    def mark_unhealthy(self, request: PlacementRequest, grant: Grant, reason: str, log: Callable[[str], None]) -> bool:
        """Take the grant's warm builder out of the rotation for a cool-down (`pool.health`); True if
        marked. Never fails the build."""

    def clear_unhealthy(self, request: PlacementRequest, grant: Grant) -> None:
        """A build succeeded on a builder that carried a mark: remove it (never fails the build)."""


class DirectLeases:
    """The runner's own credentials on the pool's Leases and pods (needs the pool's CI Role)."""

    def __init__(self, client: KubeClient, gateway: GatewayTrust | None = None):
        self.client = client
        self.gateway = gateway  # the scheduler's, for an ephemeral builder reached through the gateway
        self._history: dict[tuple[str, str], PoolHistory] = {}

    def history(self, namespace: str, pool: str) -> PoolHistory:
        key = (namespace, pool)
        if key not in self._history:
            self._history[key] = PoolHistory(self.client, namespace, pool)
        return self._history[key]

    def acquire(self, request: PlacementRequest, log: Callable[[str], None] = lambda _line: None) -> Grant:
        return acquire_build_slot(self.client, request, log=log, history=self.history(request.namespace, request.pool))

    def start_ephemeral(
        self, request: PlacementRequest, grant: Grant, settings: EphemeralSettings, on_created: Callable[[str], None]
    ) -> Grant:
        name = new_pod_name(request.pool)
        # Made before the pod, so that a failure here leaves nothing behind; valid as long as the pod may run.
        certificates = make_run_certificates(name, settings.active_deadline_seconds + 600, gateway=self.gateway)
        manifest = ephemeral_pod_manifest(
            settings, request.namespace, request.pool, request.holder, name, untrusted=request.untrusted
        )
        with signals_deferred():  # a pod created must be known before a signal can interrupt
            name, uid = create_ephemeral_pod(self.client, manifest)
            on_created(name)
        builder = Builder(name=name, uid=uid, address="", slots=1, server_name=certificates.server_name)
        try:
            labels = run_labels(request.pool, request.holder)
            create_tls_secret(self.client, tls_secret_manifest(request.namespace, name, uid, certificates, labels))
            run_lease = create_run_lease(
                self.client, request.namespace, name, uid, request.holder, request.lease_seconds
            )
        except BaseException:
            with signals_deferred():
                delete_ephemeral_pod(self.client, request.namespace, name)
            raise
        # Behind the gateway the runner never holds a key of the run: its grant certificate is its proof.
        run_tls = None if self.gateway is not None else certificates.client
        return replace(grant, lease=run_lease, builder=builder, run_tls=run_tls)

    def wait_ready(self, grant: Grant, settings: EphemeralSettings) -> Grant:
        address = wait_until_ready(
            self.client, grant.lease.namespace, grant.builder.name, settings.startup_timeout_seconds
        )
        return replace(grant, builder=replace(grant.builder, address=address))

    def renew(self, lease: SlotLease, timeout: float | None = None) -> SlotLease:
        return renew_slot(self.client, lease, timeout)

    def keep(
        self, grant: Grant, on_lost: Callable[[str], None], log: Callable[[str], None] = lambda _l: None
    ) -> Keeper:
        return LeaseKeeper(self.client, grant.lease, on_lost=on_lost, log=log).start()

    def release(self, grant: Grant) -> bool:
        if grant.path == "ephemeral":
            delete_ephemeral_pod(self.client, grant.lease.namespace, grant.builder.name)
            return True
        return release_slot(self.client, grant.lease.namespace, grant.lease.name, grant.lease.holder)

    def mark_unhealthy(
        self, request: PlacementRequest, grant: Grant, reason: str, log: Callable[[str], None] = lambda _l: None
    ) -> bool:
        by = " ".join(part for part in (request.holder.identity, request.holder.run_url) if part)
        return try_mark_unhealthy(self.client, request.namespace, request.pool, grant.builder, reason, by, log)

    def clear_unhealthy(self, request: PlacementRequest, grant: Grant) -> None:
        try:
            clear_unhealthy(self.client, request.namespace, grant.builder)
        except WarmbuildError:
            pass  # the mark has expired anyway; the next success here tries again

    def record(self, request: PlacementRequest, grant: Grant, result: BuildResult) -> None:
        entry = record_of(request.key.hash, grant.requested_at or self.client.server_now(), result)
        if entry is not None:
            self.history(request.namespace, request.pool).record(entry)
