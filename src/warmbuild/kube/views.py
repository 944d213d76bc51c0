"""Typed, read-only views of the Kubernetes objects warmbuild reads: builder Pods and slot Leases.

Decision: each resource is parsed in exactly one function here (`pod_view`, `parse_lease`); the
rest of the package reads fields of the frozen views, never the JSON. Times on a view are the API
server's (`acquireTime`, `renewTime`), and every judgement that compares them takes the server's
clock as an argument: the local clock of a CI runner may be off by minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .client import parse_kube_time
from .names import (
    BUILDER_LABEL,
    DRAINING_ANNOTATION,
    POOL_LABEL,
    RELEASE_TOKEN_HASH_ANNOTATION,
    RUN_URL_ANNOTATION,
    SLOTS_ANNOTATION,
    UNHEALTHY_ANNOTATION,
    UNHEALTHY_BY_ANNOTATION,
    UNHEALTHY_SINCE_ANNOTATION,
    WORKLOAD_KEY_ANNOTATION,
    WORKLOAD_KEY_HASH_ANNOTATION,
)

PORT_NAME = "buildkitd"
DEFAULT_SLOTS = 2
DEFAULT_PORT = 1234
DEFAULT_LEASE_SECONDS = 15


# ---------------------------------------------------------------------------------------------- Pods


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
    namespace: str = ""
    hostname: str = ""  # spec.hostname: a StatefulSet sets the pod's name
    subdomain: str = ""  # spec.subdomain: the StatefulSet's headless Service
    controller_kind: str = ""  # the ownerReference with controller: true, e.g. "StatefulSet"
    controller_uid: str = ""

    @property
    def usable(self) -> bool:
        return self.ready and not self.terminating and not self.draining and bool(self.ip)

    @property
    def stable_dns_name(self) -> str | None:
        """`<hostname>.<subdomain>.<namespace>.svc`, the name on the builder's own certificate that a
        TLS client verifies; None for a pod without a stable name (not a TLS-capable builder)."""
        if not (self.hostname and self.subdomain and self.namespace):
            return None
        return f"{self.hostname}.{self.subdomain}.{self.namespace}.svc"


def pod_view(pod: dict) -> PodView:
    meta = pod.get("metadata", {})
    annotations = meta.get("annotations") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status", {})
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
    controller = next((ref for ref in meta.get("ownerReferences") or () if ref.get("controller") is True), {})
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
        namespace=meta.get("namespace", ""),
        hostname=spec.get("hostname") or "",
        subdomain=spec.get("subdomain") or "",
        controller_kind=controller.get("kind", ""),
        controller_uid=controller.get("uid", ""),
    )


def _buildkitd_port(pod: dict) -> int:
    for container in pod.get("spec", {}).get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == PORT_NAME:
                return int(port.get("containerPort", DEFAULT_PORT))
    return DEFAULT_PORT


# -------------------------------------------------------------------------------------------- Leases


@dataclass(frozen=True)
class LeaseView:
    """One slot Lease (or an ephemeral builder's run Lease) as read from the API server.

    `body` is the Lease as read, kept only so that a compare-and-swap PUT can send it back with
    its resourceVersion; it takes no part in comparisons or repr.
    """

    name: str
    namespace: str
    uid: str
    resource_version: str
    pool: str  # label; "" on run Leases
    builder: str  # label; "" on run Leases
    holder: str  # "" when released
    workload_key: str  # the annotation's text (capped, see names.WORKLOAD_KEY_ANNOTATION_MAX)
    workload_key_hash: str  # the hash of the whole key, as the acquirer wrote it
    release_token_hash: str  # set by the scheduler: SHA-256 of the acquirer's release token ("" if direct)
    run_url: str
    acquired_at: datetime | None  # server time
    renewed_at: datetime | None  # server time
    duration_seconds: int
    transitions: int  # with the name, the fencing token
    owner_uid: str | None  # the owning Pod's uid
    body: dict = field(default_factory=dict, compare=False, repr=False)
    # a builder's health Lease only (names.health_lease_name): its unhealthy mark, if any
    unhealthy_reason: str = ""
    unhealthy_since: datetime | None = None  # server time; None when unmarked or unreadable
    unhealthy_by: str = ""

    @property
    def expiry(self) -> datetime | None:
        """When the hold ends unless renewed: renewTime (else acquireTime) + leaseDurationSeconds."""
        renewed = self.renewed_at or self.acquired_at
        return renewed + timedelta(seconds=self.duration_seconds) if renewed else None

    def is_free(self, server_now: datetime) -> bool:
        """No holder, or the hold expired by the API server's clock."""
        if not self.holder:
            return True
        expiry = self.expiry
        return expiry is None or expiry < server_now

    def held_seconds(self, server_now: datetime) -> float | None:
        """Seconds since acquireTime by the API server's clock (None if the Lease has none)."""
        return (server_now - self.acquired_at).total_seconds() if self.acquired_at else None

    @property
    def fencing_token(self) -> str:
        return f"{self.name}/{self.transitions}"


def parse_lease(body: dict) -> LeaseView:
    """The one place that reads a Lease's metadata and spec."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    owner_uid = None
    for ref in meta.get("ownerReferences") or ():
        if ref.get("kind") == "Pod":
            owner_uid = ref.get("uid")
            break
    return LeaseView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        pool=labels.get(POOL_LABEL, ""),
        builder=labels.get(BUILDER_LABEL, ""),
        holder=spec.get("holderIdentity") or "",
        workload_key=annotations.get(WORKLOAD_KEY_ANNOTATION, ""),
        workload_key_hash=annotations.get(WORKLOAD_KEY_HASH_ANNOTATION, ""),
        release_token_hash=annotations.get(RELEASE_TOKEN_HASH_ANNOTATION, ""),
        run_url=annotations.get(RUN_URL_ANNOTATION, ""),
        acquired_at=parse_kube_time(spec.get("acquireTime")),
        renewed_at=parse_kube_time(spec.get("renewTime")),
        duration_seconds=int(spec.get("leaseDurationSeconds") or DEFAULT_LEASE_SECONDS),
        transitions=int(spec.get("leaseTransitions") or 0),
        owner_uid=owner_uid,
        body=body,
        unhealthy_reason=annotations.get(UNHEALTHY_ANNOTATION, ""),
        unhealthy_since=_time_or_none(annotations.get(UNHEALTHY_SINCE_ANNOTATION)),
        unhealthy_by=annotations.get(UNHEALTHY_BY_ANNOTATION, ""),
    )


def _time_or_none(text: str | None) -> datetime | None:
    """An annotation's time, None when absent or not a time (anyone with Lease rights writes them)."""
    try:
        moment = parse_kube_time(text) if text else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None
