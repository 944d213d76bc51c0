"""The builders of a pool: pods with the pool label that are Ready, not terminating, not draining."""

from __future__ import annotations

from dataclasses import dataclass
from ..kube.client import KubeClient

POOL_LABEL = "warmbuild.dev/pool"
SLOTS_ANNOTATION = "warmbuild.dev/slots"
DRAINING_ANNOTATION = "warmbuild.dev/draining"
PORT_NAME = "buildkitd"
DEFAULT_SLOTS = 2
DEFAULT_PORT = 1234


@dataclass(frozen=True)
class Builder:
    name: str  # pod name, also the builder's identity for hashing
    uid: str
    address: str  # tcp://POD_IP:PORT
    slots: int


@dataclass(frozen=True)
class PodView:
    """What the pool needs to know of one pod, also for pods that cannot take builds."""

    name: str
    uid: str
    ip: str | None
    port: int
    slots: int
    ready: bool
    terminating: bool
    draining: bool

    @property
    def usable(self) -> bool:
        return self.ready and not self.terminating and not self.draining and bool(self.ip)


def pod_view(pod: dict) -> PodView:
    meta = pod.get("metadata", {})
    annotations = meta.get("annotations") or {}
    status = pod.get("status", {})
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
    try:
        slots = int(annotations.get(SLOTS_ANNOTATION, DEFAULT_SLOTS))
    except ValueError:
        slots = DEFAULT_SLOTS
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        ip=status.get("podIP"),
        port=_buildkitd_port(pod),
        slots=max(0, slots),
        ready=status.get("phase") == "Running" and conditions.get("Ready") == "True",
        terminating=bool(meta.get("deletionTimestamp")),
        draining=annotations.get(DRAINING_ANNOTATION, "").lower() == "true",
    )


def _buildkitd_port(pod: dict) -> int:
    for container in pod.get("spec", {}).get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == PORT_NAME:
                return int(port.get("containerPort", DEFAULT_PORT))
    return DEFAULT_PORT


def builder_from(view: PodView) -> Builder:
    return Builder(name=view.name, uid=view.uid, address=f"tcp://{view.ip}:{view.port}", slots=view.slots)


def list_pool_pods(client: KubeClient, namespace: str, pool: str) -> list[PodView]:
    # resourceVersion=0: served from the API server's watch cache. A consistent list would wait for
    # that cache to catch up with the newest etcd revision, which after a Lease write costs ~80 ms
    # every time; pod readiness a moment old is fine, because slots are taken by compare-and-swap.
    response = client.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods",
        query={"labelSelector": f"{POOL_LABEL}={pool}", "resourceVersion": "0"},
    )
    return sorted((pod_view(p) for p in response.body.get("items") or ()), key=lambda v: v.name)


def discover_builders(client: KubeClient, namespace: str, pool: str) -> tuple[Builder, ...]:
    return tuple(builder_from(v) for v in list_pool_pods(client, namespace, pool) if v.usable and v.slots > 0)
