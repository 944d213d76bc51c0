"""Build slots as coordination.k8s.io/v1 Leases: acquire, renew, release, fencing.

One Lease per slot, named `<builder pod>-slot-<i>` and owned by the builder pod, so the garbage
collector removes it with the pod. Every write is a compare-and-swap on resourceVersion: of many
CI jobs racing for a slot, exactly one update succeeds and the rest get 409 and move on.

A Lease is free when it has no holder, or when its renewTime + leaseDurationSeconds has passed by
the API server's clock (never the runner's). `leaseTransitions` counts acquisitions; with the
Lease name it is the fencing token: a holder that finds another holder, or another token, stops.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Callable

from ..kube.client import KubeClient, KubeConflict, KubeNotFound, format_micro_time, parse_kube_time
from ..errors import ClusterError, LeaseLost, WarmbuildError
from .membership import POOL_LABEL, Builder

BUILDER_LABEL = "warmbuild.dev/builder"
RUN_URL_ANNOTATION = "warmbuild.dev/run-url"
WORKLOAD_KEY_ANNOTATION = "warmbuild.dev/workload-key"
DEFAULT_LEASE_SECONDS = 15


def leases_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


def slot_lease_name(builder_name: str, slot: int) -> str:
    return f"{builder_name}-slot-{slot}"


@dataclass(frozen=True)
class HolderInfo:
    """Who holds a slot, recorded on the Lease for `warmbuild pool status`."""

    identity: str  # unique per acquisition
    run_url: str = ""
    workload_key: str = ""


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


def lease_expiry(lease: dict) -> datetime | None:
    spec = lease.get("spec") or {}
    renewed = parse_kube_time(spec.get("renewTime")) or parse_kube_time(spec.get("acquireTime"))
    if renewed is None:
        return None
    return renewed + timedelta(seconds=int(spec.get("leaseDurationSeconds") or DEFAULT_LEASE_SECONDS))


def lease_is_free(lease: dict, server_now: datetime) -> bool:
    spec = lease.get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    expiry = lease_expiry(lease)
    return expiry is None or expiry < server_now


def lease_owner_uid(lease: dict) -> str | None:
    for ref in (lease.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("kind") == "Pod":
            return ref.get("uid")
    return None


def list_pool_leases(client: KubeClient, namespace: str, pool: str) -> dict[str, dict]:
    response = client.request("GET", leases_path(namespace), query={"labelSelector": f"{POOL_LABEL}={pool}"})
    return {item["metadata"]["name"]: item for item in response.body.get("items") or ()}


def _held_spec(previous: dict, holder: HolderInfo, duration: int, now: datetime, transitions: int) -> dict:
    spec = dict(previous)
    spec.update(
        holderIdentity=holder.identity,
        leaseDurationSeconds=duration,
        acquireTime=format_micro_time(now),
        renewTime=format_micro_time(now),
        leaseTransitions=transitions,
    )
    return spec


def _annotations(holder: HolderInfo) -> dict[str, str]:
    return {RUN_URL_ANNOTATION: holder.run_url, WORKLOAD_KEY_ANNOTATION: holder.workload_key}


def _granted(namespace: str, builder: Builder, body: dict, holder: HolderInfo, duration: int, now: datetime) -> SlotLease:
    return SlotLease(
        namespace=namespace,
        name=body["metadata"]["name"],
        builder=builder.name,
        holder=holder.identity,
        transitions=int(body["spec"].get("leaseTransitions") or 0),
        resource_version=body["metadata"]["resourceVersion"],
        duration_seconds=duration,
        acquired_at=now,
    )


def try_acquire_slot(
    client: KubeClient,
    namespace: str,
    pool: str,
    builder: Builder,
    holder: HolderInfo,
    known: dict[str, dict],
    duration: int = DEFAULT_LEASE_SECONDS,
) -> SlotLease | None:
    """Take any free slot of `builder`, or return None. `known` is a recent listing of the pool's Leases."""
    for slot in range(builder.slots):
        name = slot_lease_name(builder.name, slot)
        lease = known.get(name)
        now = client.server_now()
        try:
            if lease is None:
                body = _new_lease(namespace, pool, builder, name, holder, duration, now)
                created = client.request("POST", leases_path(namespace), body=body).body
                return _granted(namespace, builder, created, holder, duration, now)
            if lease_owner_uid(lease) != builder.uid:
                # Left from an earlier pod of the same name; the garbage collector will remove it,
                # but a build must not wait for that.
                _delete_stale(client, namespace, lease)
                continue
            if not lease_is_free(lease, now):
                continue
            updated = dict(lease)
            updated["metadata"] = dict(lease["metadata"])
            updated["metadata"]["annotations"] = {**(lease["metadata"].get("annotations") or {}), **_annotations(holder)}
            transitions = int((lease.get("spec") or {}).get("leaseTransitions") or 0) + 1
            updated["spec"] = _held_spec(lease.get("spec") or {}, holder, duration, now, transitions)
            replaced = client.request("PUT", leases_path(namespace, name), body=updated).body
            return _granted(namespace, builder, replaced, holder, duration, now)
        except (KubeConflict, KubeNotFound):
            continue  # someone else won this slot, or it vanished: try the next one
    return None


def _new_lease(namespace: str, pool: str, builder: Builder, name: str, holder: HolderInfo, duration: int, now: datetime) -> dict:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {POOL_LABEL: pool, BUILDER_LABEL: builder.name},
            "annotations": _annotations(holder),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": builder.name, "uid": builder.uid}],
        },
        "spec": _held_spec({}, holder, duration, now, transitions=1),
    }


def _delete_stale(client: KubeClient, namespace: str, lease: dict) -> None:
    meta = lease["metadata"]
    try:
        client.request(
            "DELETE",
            leases_path(namespace, meta["name"]),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}},
        )
    except (KubeConflict, KubeNotFound):
        pass


def renew_slot(client: KubeClient, held: SlotLease) -> SlotLease:
    """Extend the lease; raise LeaseLost if another holder has it (fencing)."""
    for _ in range(5):
        try:
            lease = client.request("GET", leases_path(held.namespace, held.name)).body
        except KubeNotFound:
            raise LeaseLost(f"slot lease {held.name} was deleted (its builder left the pool)") from None
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != held.holder or int(spec.get("leaseTransitions") or 0) != held.transitions:
            other = spec.get("holderIdentity") or "nobody"
            raise LeaseLost(f"slot lease {held.name} is now held by {other}")
        spec = dict(spec, renewTime=format_micro_time(client.server_now()))
        try:
            updated = client.request("PUT", leases_path(held.namespace, held.name), body=dict(lease, spec=spec)).body
            return replace(held, resource_version=updated["metadata"]["resourceVersion"])
        except KubeConflict:
            continue  # changed between our read and write: read again and re-check the holder
        except KubeNotFound:
            raise LeaseLost(f"slot lease {held.name} was deleted (its builder left the pool)") from None
    raise ClusterError(f"could not renew slot lease {held.name}: it kept changing under us")


def release_slot(client: KubeClient, namespace: str, name: str, holder: str) -> bool:
    """Give the slot back if `holder` still has it. Idempotent: True only if this call released it."""
    for _ in range(5):
        try:
            lease = client.request("GET", leases_path(namespace, name)).body
        except KubeNotFound:
            return False
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != holder:
            return False
        for field in ("holderIdentity", "acquireTime", "renewTime"):
            spec.pop(field, None)
        meta = dict(lease["metadata"])
        meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in (RUN_URL_ANNOTATION, WORKLOAD_KEY_ANNOTATION)}
        try:
            client.request("PUT", leases_path(namespace, name), body=dict(lease, metadata=meta, spec=spec))
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

    def __init__(self, renew: Callable[[SlotLease], SlotLease], held: SlotLease, on_lost: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.renew = renew
        self.held = held
        self.on_lost = on_lost
        self.clock = clock
        self.lost_reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"renew-{held.name}", daemon=True)

    def start(self) -> "SlotKeeper":
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

    def __init__(self, client: KubeClient, held: SlotLease, on_lost: Callable[[str], None]):
        super().__init__(lambda slot: renew_slot(client, slot), held, on_lost)
