"""The builders of a pool: pods with the pool label that are Ready, not terminating, not draining.

Pods are read through `kube.views.pod_view` (the one parser of a Pod); this module decides which of
them are builders.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..kube.client import KubeClient
from ..kube.names import POOL_LABEL, pods_path
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


def list_pool_pods(client: KubeClient, namespace: str, pool: str) -> list[PodView]:
    # resourceVersion=0: served from the API server's watch cache. A consistent list would wait for
    # that cache to catch up with the newest etcd revision, which after a Lease write costs ~80 ms
    # every time; pod readiness a moment old is fine, because slots are taken by compare-and-swap.
    response = client.request(
        "GET",
        pods_path(namespace),
        query={"labelSelector": f"{POOL_LABEL}={pool}", "resourceVersion": "0"},
    )
    return sorted((pod_view(p) for p in response.body.get("items") or ()), key=lambda v: v.name)


def discover_builders(client: KubeClient, namespace: str, pool: str) -> tuple[Builder, ...]:
    return tuple(builder_from(v) for v in list_pool_pods(client, namespace, pool) if v.usable and v.slots > 0)
