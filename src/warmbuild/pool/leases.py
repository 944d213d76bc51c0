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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from ..errors import ClusterError, LeaseLost, WarmbuildError
from ..kube.client import KubeConflict, KubeNotFound, format_micro_time
from ..kube.names import (
    BUILDER_LABEL,
    POOL_LABEL,
    RUN_URL_ANNOTATION,
    WORKLOAD_KEY_ANNOTATION,
    WORKLOAD_KEY_ANNOTATION_MAX,
    WORKLOAD_KEY_HASH_ANNOTATION,
    leases_path,
    slot_lease_name,
)
from ..kube.views import DEFAULT_LEASE_SECONDS, LeaseView, parse_lease
from .membership import Builder

HOLDER_ANNOTATIONS = (RUN_URL_ANNOTATION, WORKLOAD_KEY_ANNOTATION, WORKLOAD_KEY_HASH_ANNOTATION)


class KubeResponseLike(Protocol):
    body: dict


class LeaseApi(Protocol):
    """All the slot functions need of the API server: KubeClient has this shape, and so does the
    in-memory fake of the unit tests (tests/unit/conftest.py)."""

    def request(
        self, method: str, path: str, body: dict | None = None, query: Mapping[str, str] | None = None
    ) -> KubeResponseLike: ...

    def server_now(self) -> datetime: ...


@dataclass(frozen=True)
class HolderInfo:
    """Who holds a slot, recorded on the Lease for `warmbuild pool status` and placement."""

    identity: str  # unique per acquisition
    run_url: str = ""
    workload_key: str = ""  # stored capped at WORKLOAD_KEY_ANNOTATION_MAX characters
    workload_key_hash: str = ""  # of the whole key: what readers compare


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
    return {
        RUN_URL_ANNOTATION: holder.run_url,
        WORKLOAD_KEY_ANNOTATION: holder.workload_key[:WORKLOAD_KEY_ANNOTATION_MAX],
        WORKLOAD_KEY_HASH_ANNOTATION: holder.workload_key_hash,
    }


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
    meta["annotations"] = {**(meta.get("annotations") or {}), **holder_annotations(holder)}
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
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in HOLDER_ANNOTATIONS}
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
    """Take any free slot of `builder`, or return None. `known` is a recent listing of the pool's Leases."""
    for slot in range(builder.slots):
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


def renew_slot(client: LeaseApi, held: SlotLease) -> SlotLease:
    """Extend the lease; raise LeaseLost if another holder has it (fencing)."""
    for _ in range(5):
        try:
            lease = parse_lease(client.request("GET", leases_path(held.namespace, held.name)).body)
        except KubeNotFound:
            raise LeaseLost(f"slot lease {held.name} was deleted (its builder left the pool)") from None
        if not lease.holder or lease.holder != held.holder or lease.transitions != held.transitions:
            raise LeaseLost(f"slot lease {held.name} is now held by {lease.holder or 'nobody'}")
        try:
            updated = client.request(
                "PUT", leases_path(held.namespace, held.name), body=_renewed_body(lease, client.server_now())
            ).body
            return replace(held, resource_version=parse_lease(updated).resource_version)
        except KubeConflict:
            continue  # changed between our read and write: read again and re-check the holder
        except KubeNotFound:
            raise LeaseLost(f"slot lease {held.name} was deleted (its builder left the pool)") from None
    raise ClusterError(f"could not renew slot lease {held.name}: it kept changing under us")


def release_slot(client: LeaseApi, namespace: str, name: str, holder: str) -> bool:
    """Give the slot back if `holder` still has it. Idempotent: True only if this call released it."""
    for _ in range(5):
        try:
            lease = parse_lease(client.request("GET", leases_path(namespace, name)).body)
        except KubeNotFound:
            return False
        if not lease.holder or lease.holder != holder:
            return False
        try:
            client.request("PUT", leases_path(namespace, name), body=_released_body(lease))
            return True
        except KubeConflict:
            continue
        except KubeNotFound:
            return False
    raise ClusterError(f"could not release slot lease {name}: it kept changing under us")


class SlotKeeper:
    """Renews a held slot every duration/3 in a background thread; calls `on_lost` once if fenced.

    `renew` returns the renewed slot or raises: LeaseLost when another holder has it; any other
    WarmbuildError is retried at the next interval until a whole lease duration has passed since
    the last renewal — from then on the slot may be someone else's, and the build must stop.
    """

    def __init__(
        self,
        renew: Callable[[SlotLease], SlotLease],
        held: SlotLease,
        on_lost: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.renew = renew
        self.held = held
        self.on_lost = on_lost
        self.clock = clock
        self.lost_reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"renew-{held.name}", daemon=True)

    def start(self) -> SlotKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = max(0.5, self.held.duration_seconds / 3)
        renewed_at = self.clock()
        while not self._stop.wait(interval):
            try:
                self.held = self.renew(self.held)
                renewed_at = self.clock()
            except LeaseLost as exc:
                self._lose(exc.message)
                return
            except WarmbuildError as exc:
                if self.clock() - renewed_at >= self.held.duration_seconds:
                    self._lose(f"could not renew slot lease {self.held.name} before it expired: {exc.message}")
                    return

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        self.on_lost(reason)


class LeaseKeeper(SlotKeeper):
    """A SlotKeeper that renews the Lease directly on the API server."""

    def __init__(self, client: LeaseApi, held: SlotLease, on_lost: Callable[[str], None]):
        super().__init__(lambda slot: renew_slot(client, slot), held, on_lost)
