"""`warmbuild pool status`: builders, their slots, who holds them and for how long, and which are
out of the rotation as unhealthy (reason, since, until; who marked them).

`without_holders` is the same status with who holds each slot left out (holder, run URL, workload
key, who marked a builder): what the scheduler shows callers that are not the pool's admins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime

from ..kube.client import KubeClient
from ..kube.names import slot_lease_name
from .health import mark_of
from .leases import list_pool_leases
from .membership import list_pool_pods
from .policy import cooling_down


@dataclass(frozen=True)
class SlotStatus:
    lease: str
    holder: str | None
    run_url: str | None
    workload_key: str | None
    held_seconds: float | None  # since it was acquired, by server time
    renewed_seconds_ago: float | None
    busy: bool = False  # held now (holder may be hidden)


@dataclass(frozen=True)
class BuilderStatus:
    name: str
    address: str | None
    ready: bool
    draining: bool
    terminating: bool
    slots: tuple[SlotStatus, ...]
    # the builder's unhealthy mark (pool.health), while placement skips it; None when in the rotation
    unhealthy: str | None = None
    unhealthy_since: datetime | None = None
    unhealthy_until: datetime | None = None
    unhealthy_by: str | None = None

    @property
    def in_use(self) -> int:
        return sum(1 for s in self.slots if s.busy)


@dataclass(frozen=True)
class PoolStatus:
    namespace: str
    pool: str
    server_time: datetime
    builders: tuple[BuilderStatus, ...]


def _seconds_since(moment: datetime | None, now: datetime) -> float | None:
    return round((now - moment).total_seconds(), 1) if moment else None


def read_pool_status(client: KubeClient, namespace: str, pool: str) -> PoolStatus:
    pods = list_pool_pods(client, namespace, pool)
    leases = list_pool_leases(client, namespace, pool)
    now = client.server_now()
    builders = []
    for pod in pods:
        slots = []
        for index in range(pod.slots):
            name = slot_lease_name(pod.name, index)
            lease = leases.get(name)
            held = lease is not None and not lease.is_free(now)
            slots.append(
                SlotStatus(
                    lease=name,
                    holder=(lease.holder or None) if held else None,
                    run_url=(lease.run_url or None) if held else None,
                    workload_key=(lease.workload_key or None) if held else None,
                    held_seconds=_seconds_since(lease.acquired_at, now) if held else None,
                    renewed_seconds_ago=_seconds_since(lease.renewed_at, now) if held else None,
                    busy=held,
                )
            )
        mark = mark_of(leases, pod.name, pod.uid)
        cooling = mark is not None and cooling_down(mark, now)
        builders.append(
            BuilderStatus(
                name=pod.name,
                address=f"tcp://{pod.ip}:{pod.port}" if pod.ip else None,
                ready=pod.ready,
                draining=pod.draining,
                terminating=pod.terminating,
                slots=tuple(slots),
                unhealthy=mark.reason if cooling else None,
                unhealthy_since=mark.since if cooling else None,
                unhealthy_until=mark.until() if cooling else None,
                unhealthy_by=(mark.by or None) if cooling else None,
            )
        )
    return PoolStatus(namespace, pool, now, tuple(builders))


def without_holders(status: PoolStatus) -> PoolStatus:
    """The status with no holder identities, run URLs or workload keys: slots say only busy or free."""
    hidden = {"holder": None, "run_url": None, "workload_key": None}
    builders = tuple(
        replace(b, slots=tuple(replace(s, **hidden) for s in b.slots), unhealthy_by=None) for b in status.builders
    )
    return replace(status, builders=builders)


def status_to_dict(status: PoolStatus) -> dict:
    return {
        "namespace": status.namespace,
        "pool": status.pool,
        "server_time": status.server_time.isoformat(),
        "builders": [_builder_dict(b) for b in status.builders],
    }


def _builder_dict(builder: BuilderStatus) -> dict:
    document = dict(asdict(builder), in_use=builder.in_use)
    for key in ("unhealthy_since", "unhealthy_until"):
        document[key] = document[key].isoformat() if document[key] else None
    return document


def builder_state(b: BuilderStatus) -> str:
    if b.terminating:
        return "terminating"
    if b.draining:
        return "draining"
    if not b.ready:
        return "not-ready"
    return "unhealthy" if b.unhealthy else "ready"


def render_status_table(status: PoolStatus) -> str:
    total = sum(len(b.slots) for b in status.builders)
    used = sum(b.in_use for b in status.builders)
    lines = [f"pool {status.pool} in {status.namespace}: {len(status.builders)} builders, {used}/{total} slots in use"]
    header = ("BUILDER", "STATE", "ADDRESS", "SLOT", "HOLDER", "HELD", "RUN")
    rows = []
    for b in status.builders:
        state = builder_state(b)
        for i, slot in enumerate(b.slots or (None,)):
            rows.append(
                (
                    b.name if i == 0 else "",
                    state if i == 0 else "",
                    (b.address or "-") if i == 0 else "",
                    slot.lease.rsplit("-", 1)[-1] if slot else "-",
                    (slot.holder or ("busy" if slot.busy else "free")) if slot else "-",
                    f"{slot.held_seconds:.0f}s" if slot and slot.held_seconds is not None else "",
                    (slot.run_url or "") if slot else "",
                )
            )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    for b in status.builders:
        if b.unhealthy:
            left = max(0.0, (b.unhealthy_until - status.server_time).total_seconds())
            by = f" by {b.unhealthy_by}" if b.unhealthy_by else ""
            lines.append(
                f"{b.name}: unhealthy since {b.unhealthy_since:%H:%M:%S}Z{by}: {b.unhealthy}; "
                f"skipped by placement for {left:.0f}s more, then tried again"
            )
    return "\n".join(lines)
