"""The builders of a pool: pods of the pool's StatefulSets that are Ready, not terminating, not draining.

Membership is verified, not declared: the pool label on a pod is only where to look. A pod counts
only if its controller ownerReference names, by uid, a StatefulSet labelled with the pool in the
same namespace. CI identities cannot create StatefulSets, and the admission policy refuses the pool
label and owner references on the pods they create, so neither a hand-made pod nor an ephemeral
builder can join the pool and be handed another job's build context and secrets.

Pods are read through `kube.views.pod_view` (the one parser of a Pod); this module decides which of
them are builders.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..kube.client import KubeClient
from ..kube.names import POOL_LABEL, pods_path, statefulsets_path
from ..kube.views import DEFAULT_PORT, DEFAULT_SLOTS, PORT_NAME, PodView, pod_view

__all__ = [
    "Builder",
    "PodView",
    "pod_view",
    "DEFAULT_SLOTS",
    "DEFAULT_PORT",
    "PORT_NAME",
    "builder_from",
    "list_pool_pods",
    "pool_statefulset_uids",
    "members",
    "discover_builders",
]


@dataclass(frozen=True)
class Builder:
    name: str  # pod name, also the builder's identity for hashing
    uid: str
    address: str  # tcp://POD_IP:PORT
    slots: int
    server_name: str | None = None  # the name its certificate must carry (PodView.stable_dns_name)


def builder_from(view: PodView) -> Builder:
    return Builder(
        name=view.name,
        uid=view.uid,
        address=f"tcp://{view.ip}:{view.port}",
        slots=view.slots,
        server_name=view.stable_dns_name,
    )


def pool_statefulset_uids(client: KubeClient, namespace: str, pool: str) -> frozenset[str]:
    """The uids of the StatefulSets labelled with the pool: the only controllers a builder may have."""
    response = client.request(
        "GET",
        statefulsets_path(namespace),
        query={"labelSelector": f"{POOL_LABEL}={pool}", "resourceVersion": "0"},
    )
    return frozenset(s["metadata"]["uid"] for s in response.body.get("items") or () if s["metadata"].get("uid"))


def members(pods: Iterable[PodView], statefulset_uids: frozenset[str]) -> list[PodView]:
    """The pods whose controller is one of the pool's StatefulSets (pure), by name."""
    return sorted(
        (p for p in pods if p.controller_kind == "StatefulSet" and p.controller_uid in statefulset_uids),
        key=lambda v: v.name,
    )


def list_pool_pods(client: KubeClient, namespace: str, pool: str) -> list[PodView]:
    """The pool's member pods, usable or not."""
    # resourceVersion=0: served from the API server's watch cache. A consistent list would wait for
    # that cache to catch up with the newest etcd revision, which after a Lease write costs ~80 ms
    # every time; pod readiness a moment old is fine, because slots are taken by compare-and-swap.
    owners = pool_statefulset_uids(client, namespace, pool)
    if not owners:
        return []
    response = client.request(
        "GET",
        pods_path(namespace),
        query={"labelSelector": f"{POOL_LABEL}={pool}", "resourceVersion": "0"},
    )
    return members(map(pod_view, response.body.get("items") or ()), owners)


def discover_builders(client: KubeClient, namespace: str, pool: str) -> tuple[Builder, ...]:
    return tuple(builder_from(v) for v in list_pool_pods(client, namespace, pool) if v.usable and v.slots > 0)
