"""Unhealthy builders leave the rotation: the mark, where it lives, and reading it back.

A builder whose solve failed for an infrastructure reason — the connection to it was lost, it did
not answer, its disk is full, its snapshotter failed (`buildkit.failures`) — is marked by the CI
step that saw it, and placement skips it for `policy.UNHEALTHY_COOLDOWN_SECONDS` after the mark
(`policy.out_of_rotation`). After the cool-down it is tried again: the build's own checks before the
solve (TCP connect, `buildctl debug workers`) are its health check, and a build that succeeds there
removes the mark; one that fails the same way marks it again.

Decision: the mark is annotations on a per-builder *health Lease* (`<pod>-health`), not on the pod.
The CI Role may update Leases but not pods, and it stays that way (patching pods would let a CI job
relabel a builder out of its pool or mark it draining); the scheduler's Role is the same. The health
Lease carries the pool and builder labels, so the listing and the watch that already read the slot
Leases bring it along at no extra request, and it is owned by the builder pod, so the garbage
collector removes it with the pod (a re-created builder starts healthy; a mark of an earlier pod of
the same name, by owner uid, is ignored). It is never held: no holder, so nothing counts it as a
busy slot. CI identities have no Lease delete, so a mark is cleared by removing its annotations.

Anyone with the CI Role can write a mark (docs/security.md): it costs at most one cool-down per
write, a mark dated in the future is ignored, and the mark names who wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ..errors import ClusterError, WarmbuildError
from ..kube.client import KubeConflict, KubeNotFound, format_micro_time
from ..kube.names import (
    BUILDER_LABEL,
    POOL_LABEL,
    UNHEALTHY_ANNOTATION,
    UNHEALTHY_BY_ANNOTATION,
    UNHEALTHY_REASON_MAX,
    UNHEALTHY_SINCE_ANNOTATION,
    health_lease_name,
    leases_path,
)
from ..kube.views import LeaseView, parse_lease
from .leases import LeaseApi
from .membership import Builder
from .policy import HealthMark

MARK_ANNOTATIONS = (UNHEALTHY_ANNOTATION, UNHEALTHY_SINCE_ANNOTATION, UNHEALTHY_BY_ANNOTATION)


def health_marks(leases: Mapping[str, LeaseView], builders: Iterable[Builder]) -> dict[str, HealthMark]:
    """builder name → its mark, from the pool's Leases as listed (or watched) for placement; only a
    health Lease owned by the builder's current pod counts."""
    marks = {}
    for builder in builders:
        mark = mark_of(leases, builder.name, builder.uid)
        if mark is not None:
            marks[builder.name] = mark
    return marks


def mark_of(leases: Mapping[str, LeaseView], name: str, uid: str) -> HealthMark | None:
    """The mark on the health Lease of builder pod `name` with `uid`, if it has a readable one."""
    lease = leases.get(health_lease_name(name))
    if lease is None or lease.owner_uid != uid or not lease.unhealthy_reason or lease.unhealthy_since is None:
        return None
    return HealthMark(name, lease.unhealthy_reason, lease.unhealthy_since, lease.unhealthy_by)


def _mark_annotations(reason: str, since: str, by: str) -> dict[str, str]:
    return {
        UNHEALTHY_ANNOTATION: " ".join(reason.split())[:UNHEALTHY_REASON_MAX],
        UNHEALTHY_SINCE_ANNOTATION: since,
        UNHEALTHY_BY_ANNOTATION: by[:UNHEALTHY_REASON_MAX],
    }


def mark_unhealthy(client: LeaseApi, namespace: str, pool: str, builder: Builder, reason: str, by: str) -> None:
    """Write the mark (now, by the API server's clock) on the builder's health Lease, creating it
    owned by the builder pod. Raises ClusterError and the like; `try_mark_unhealthy` does not."""
    name = health_lease_name(builder.name)
    path = leases_path(namespace, name)
    for _ in range(5):
        annotations = _mark_annotations(reason, format_micro_time(client.server_now()), by)
        try:
            lease = parse_lease(client.request("GET", path).body)
        except KubeNotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {POOL_LABEL: pool, BUILDER_LABEL: builder.name},
                    "annotations": annotations,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": builder.name, "uid": builder.uid}],
                },
                "spec": {},
            }
            try:
                client.request("POST", leases_path(namespace), body=body)
                return
            except KubeConflict:
                continue  # another job marked it at the same moment: read it and write ours over it
        meta = dict(lease.body.get("metadata") or {})
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
        if lease.owner_uid != builder.uid:  # left by an earlier pod of the same name: now this pod's
            meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": builder.name, "uid": builder.uid}]
        try:
            client.request("PUT", path, body=dict(lease.body, metadata=meta))
            return
        except (KubeConflict, KubeNotFound):
            continue
    raise ClusterError(f"could not mark builder {builder.name} unhealthy: its health Lease kept changing under us")


def clear_unhealthy(client: LeaseApi, namespace: str, builder: Builder) -> bool:
    """Remove the builder's mark (its health check passed: a build succeeded there). True if removed."""
    path = leases_path(namespace, health_lease_name(builder.name))
    for _ in range(5):
        try:
            lease = parse_lease(client.request("GET", path).body)
        except KubeNotFound:
            return False
        meta = dict(lease.body.get("metadata") or {})
        annotations = meta.get("annotations") or {}
        if not any(key in annotations for key in MARK_ANNOTATIONS):
            return False
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in MARK_ANNOTATIONS}
        try:
            client.request("PUT", path, body=dict(lease.body, metadata=meta))
            return True
        except KubeConflict:
            continue
        except KubeNotFound:
            return False
    return False


def try_mark_unhealthy(
    client: LeaseApi,
    namespace: str,
    pool: str,
    builder: Builder,
    reason: str,
    by: str,
    log: Callable[[str], None] = lambda _line: None,
) -> bool:
    """`mark_unhealthy` that never fails the build: False (and one line) when the mark could not be written."""
    try:
        mark_unhealthy(client, namespace, pool, builder, reason, by)
        return True
    except WarmbuildError as exc:
        log(f"warning: could not mark builder {builder.name} unhealthy: {exc.message}")
        return False
