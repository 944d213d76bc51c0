"""`warmbuild pool status`: builders, their slots, who holds them and for how long.

`without_holders` is the same status with who holds each slot left out (holder, run URL, workload
key): what the scheduler shows callers that are not the pool's admins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime

from ..kube.client import KubeClient
from ..kube.names import slot_lease_name
from .leases import list_pool_leases
from .membership import list_pool_pods


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
        builders.append(
            BuilderStatus(
                name=pod.name,
                address=f"tcp://{pod.ip}:{pod.port}" if pod.ip else None,
                ready=pod.ready,
                draining=pod.draining,
                terminating=pod.terminating,
                slots=tuple(slots),
            )
        )
    return PoolStatus(namespace, pool, now, tuple(builders))


def without_holders(status: PoolStatus) -> PoolStatus:
    """The status with no holder identities, run URLs or workload keys: slots say only busy or free."""
    hidden = {"holder": None, "run_url": None, "workload_key": None}
    builders = tuple(replace(b, slots=tuple(replace(s, **hidden) for s in b.slots)) for b in status.builders)
    return replace(status, builders=builders)


def status_to_dict(status: PoolStatus) -> dict:
    return {
        "namespace": status.namespace,
        "pool": status.pool,
        "server_time": status.server_time.isoformat(),
        "builders": [dict(asdict(b), in_use=b.in_use) for b in status.builders],
    }


def render_status_table(status: PoolStatus) -> str:
    total = sum(len(b.slots) for b in status.builders)
    used = sum(b.in_use for b in status.builders)
    lines = [f"pool {status.pool} in {status.namespace}: {len(status.builders)} builders, {used}/{total} slots in use"]
    header = ("BUILDER", "STATE", "ADDRESS", "SLOT", "HOLDER", "HELD", "RUN")
    rows = []
    for b in status.builders:
        state = "terminating" if b.terminating else "draining" if b.draining else "ready" if b.ready else "not-ready"
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
    return "\n".join(lines)
