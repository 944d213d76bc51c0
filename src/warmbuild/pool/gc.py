"""`warmbuild gc`: remove what a killed CI job can leave behind. Idempotent; safe from a CronJob.

- ephemeral builder pods whose run Lease expired or never appeared (the job stopped renewing it),
  that ran past their deadline, or that ended;
- Leases owned by pods that no longer exist (the garbage collector does this too, when it runs);
- ephemeral builders' certificate Secrets (`<pod>-tls`, labelled ephemeral) whose pod no longer
  exists: the garbage collector deletes them with their pod through the ownerReference; this is
  for clusters where it lags. Skipped when the identity running gc may not list Secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ..errors import ClusterError
from ..kube.client import KubeClient, KubeConflict, KubeNotFound, parse_kube_time
from ..kube.names import EPHEMERAL_LABEL, EPHEMERAL_POOL_LABEL, leases_path, pods_path, secrets_path
from ..kube.views import LeaseView, parse_lease
from .ephemeral import delete_ephemeral_pod

STARTUP_GRACE_SECONDS = 180  # a pod may exist this long before its run Lease must be there


@dataclass(frozen=True)
class Collected:
    kind: str  # pod | lease | secret
    name: str
    reason: str


def find_garbage(
    pods: list[dict],
    ephemeral_pods: list[dict],
    leases: list[LeaseView],
    server_now,
    run_secrets: list[dict] = (),
) -> list[Collected]:
    """What to delete (pure): ephemeral pods first, then Leases and run Secrets whose owner pod is gone."""
    garbage: list[Collected] = []
    leases_by_name = {lease.name: lease for lease in leases}
    for pod in ephemeral_pods:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        name = meta["name"]
        created = parse_kube_time(meta.get("creationTimestamp"))
        age = (server_now - created).total_seconds() if created else 0.0
        deadline = spec.get("activeDeadlineSeconds")
        run_lease = leases_by_name.get(name)
        if status.get("phase") in ("Failed", "Succeeded"):
            garbage.append(
                Collected("pod", name, f"ended ({status.get('phase')}: {status.get('reason') or 'no reason'})")
            )
        elif deadline and created and created + timedelta(seconds=int(deadline)) < server_now:
            garbage.append(Collected("pod", name, f"past its deadline of {deadline}s"))
        elif run_lease is not None and run_lease.is_free(server_now):
            garbage.append(Collected("pod", name, "its run lease expired: the CI job stopped renewing it"))
        elif run_lease is None and age > STARTUP_GRACE_SECONDS:
            garbage.append(Collected("pod", name, f"no run lease after {age:.0f}s: its CI job is gone"))
    live_uids = {p["metadata"]["uid"] for p in pods}
    for lease in leases:
        if lease.owner_uid is not None and lease.owner_uid not in live_uids:
            garbage.append(Collected("lease", lease.name, "its builder pod no longer exists"))
    for secret in run_secrets:
        meta = secret.get("metadata") or {}
        owners = [ref.get("uid") for ref in meta.get("ownerReferences") or () if ref.get("kind") == "Pod"]
        created = parse_kube_time(meta.get("creationTimestamp"))
        age = (server_now - created).total_seconds() if created else 0.0
        if owners and not set(owners) & live_uids:
            garbage.append(Collected("secret", meta["name"], "its ephemeral builder pod no longer exists"))
        elif not owners and age > STARTUP_GRACE_SECONDS:
            garbage.append(Collected("secret", meta["name"], "an ephemeral builder's Secret without a pod"))
    return garbage


def list_run_secrets(client: KubeClient, namespace: str) -> list[dict]:
    """Ephemeral builders' certificate Secrets; none when this identity may not list Secrets."""
    try:
        query = {"labelSelector": f"{EPHEMERAL_LABEL}=true"}
        return client.request("GET", secrets_path(namespace), query=query).body.get("items") or []
    except ClusterError:
        return []


def collect_garbage(
    client: KubeClient, namespace: str, pool: str | None = None, dry_run: bool = False
) -> list[Collected]:
    pods = client.request("GET", pods_path(namespace)).body.get("items") or []
    selector = f"{EPHEMERAL_LABEL}=true" + (f",{EPHEMERAL_POOL_LABEL}={pool}" if pool else "")
    ephemeral = client.request("GET", pods_path(namespace), query={"labelSelector": selector}).body.get("items") or []
    leases = [parse_lease(item) for item in client.request("GET", leases_path(namespace)).body.get("items") or ()]
    garbage = find_garbage(pods, ephemeral, leases, client.server_now(), list_run_secrets(client, namespace))
    if dry_run:
        return garbage
    by_name = {lease.name: lease for lease in leases}
    for item in garbage:
        if item.kind == "pod":
            delete_ephemeral_pod(client, namespace, item.name)
        elif item.kind == "secret":
            try:
                client.request("DELETE", secrets_path(namespace, item.name))
            except KubeNotFound:
                pass
        else:
            try:
                client.request(
                    "DELETE",
                    leases_path(namespace, item.name),
                    body={
                        "kind": "DeleteOptions",
                        "apiVersion": "v1",
                        "preconditions": {"uid": by_name[item.name].uid},
                    },
                )
            except (KubeNotFound, KubeConflict):
                pass
    return garbage
