"""Ephemeral builders: one short-lived BuildKit pod per build, when no warm slot will do.

create → wait until Ready (a watch; on timeout, one line quoting the pod's events) → build →
delete, always. The pod carries a Lease of its own (same name, owned by the pod) that the CI step
renews while it runs: `warmbuild gc` deletes pods whose Lease expired, i.e. whose CI job died.
`activeDeadlineSeconds` is the last safety net.

mTLS always: the CI step names the pod itself (`warmbuild-<pool>-ephemeral-<random>`), makes the
run's certificates for that name (`run_certs`), creates the pod, then the Secret `<pod>-tls` with
an ownerReference to the pod, so the garbage collector deletes it with the pod and the CI identity
needs `secrets create` only (never get, list, update or delete). The pod waits for the Secret like
any pod waits for a volume. A Secret of that name that exists already (someone raced to plant
their own key) is an error: the build does not use that builder.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import BuilderStartFailed, ClusterError, InputError
from ..kube.client import KubeClient, KubeConflict, KubeNotFound
from ..kube.names import (
    EPHEMERAL_LABEL,
    EPHEMERAL_POOL_LABEL,
    RUN_LABEL,
    RUN_URL_ANNOTATION,
    UNTRUSTED_LABEL,
    WORKLOAD_KEY_ANNOTATION,
    WORKLOAD_KEY_ANNOTATION_MAX,
    ephemeral_pod_name,
    ephemeral_tls_secret_name,
    events_path,
    leases_path,
    pods_path,
    secrets_path,
)
from ..kube.views import parse_lease
from .leases import HolderInfo, SlotLease, new_lease_body
from .run_certs import RunCertificates

BUILDKITD_PORT = 1234
TLS_DIR = "/etc/buildkit/tls"  # where the ephemeral builder's Secret is mounted
DEFAULT_IMAGE = "moby/buildkit:v0.34.2"
DEFAULT_ROOTLESS_IMAGE = "moby/buildkit:v0.34.2-rootless"


@dataclass(frozen=True)
class EphemeralSettings:
    """How ephemeral builder pods look. Loaded from --ephemeral-config (YAML) and flags."""

    image: str | None = None  # default depends on rootless
    rootless: bool | None = None  # None: rootless for untrusted builds, privileged for trusted ones
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    active_deadline_seconds: int = 3600
    startup_timeout_seconds: float = 120.0

    def runs_rootless(self, untrusted: bool) -> bool:
        """An untrusted build (anyone's code) gets a rootless builder unless the settings say otherwise."""
        return untrusted if self.rootless is None else self.rootless

    def image_for(self, untrusted: bool) -> str:
        return self.image or (DEFAULT_ROOTLESS_IMAGE if self.runs_rootless(untrusted) else DEFAULT_IMAGE)


_CONFIG_FIELDS = {
    "image": "image",
    "rootless": "rootless",
    "resources": "resources",
    "nodeSelector": "node_selector",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "imagePullSecrets": "image_pull_secrets",
    "serviceAccountName": "service_account",
    "labels": "labels",
    "annotations": "annotations",
    "activeDeadlineSeconds": "active_deadline_seconds",
    "startupTimeoutSeconds": "startup_timeout_seconds",
}


def load_ephemeral_settings(path: str | None, overrides: Mapping[str, Any] | None = None) -> EphemeralSettings:
    """Read the YAML settings file (keys as in a pod spec), then apply flag overrides."""
    values: dict[str, Any] = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise InputError(f"--ephemeral-config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise InputError(f"--ephemeral-config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise InputError(f"--ephemeral-config {path} must be a mapping of settings")
        unknown = sorted(set(raw) - set(_CONFIG_FIELDS))
        if unknown:
            raise InputError(
                f"--ephemeral-config {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(_CONFIG_FIELDS)}"
            )
        values = {_CONFIG_FIELDS[k]: v for k, v in raw.items()}
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    if "tolerations" in values:
        values["tolerations"] = tuple(values["tolerations"] or ())
    if "image_pull_secrets" in values:
        values["image_pull_secrets"] = tuple(
            s["name"] if isinstance(s, dict) else str(s) for s in values["image_pull_secrets"] or ()
        )
    if "rootless" in values and not isinstance(values["rootless"], bool):
        raise InputError("ephemeral setting rootless must be true or false")
    for key in ("active_deadline_seconds",):
        if key in values and (not isinstance(values[key], int) or values[key] <= 0):
            raise InputError(f"ephemeral {key.replace('_', ' ')} must be a positive whole number of seconds")
    if "startup_timeout_seconds" in values:
        try:
            values["startup_timeout_seconds"] = float(values["startup_timeout_seconds"])
        except (TypeError, ValueError):
            raise InputError("ephemeral startup timeout must be a number of seconds") from None
        if values["startup_timeout_seconds"] <= 0:
            raise InputError("ephemeral startup timeout must be a positive number of seconds")
    return EphemeralSettings(**values)


def run_id(holder: HolderInfo) -> str:
    """A label-safe id of the CI run (labels cannot hold URLs)."""
    source = holder.run_url or holder.identity
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def new_pod_name(pool: str) -> str:
    return ephemeral_pod_name(pool, secrets.token_hex(4))


def ephemeral_pod_manifest(
    settings: EphemeralSettings, namespace: str, pool: str, holder: HolderInfo, name: str, untrusted: bool = False
) -> dict:
    """The pod for one ephemeral builder (pure): mTLS with the run's certificate from Secret `<name>-tls`;
    for an untrusted build rootless by default and labelled for the untrusted NetworkPolicy."""
    rootless = settings.runs_rootless(untrusted)
    container: dict[str, Any] = {
        "name": "buildkitd",
        "image": settings.image_for(untrusted),
        "args": [
            "--addr",
            f"tcp://0.0.0.0:{BUILDKITD_PORT}",
            "--addr",
            "unix:///run/buildkit/buildkitd.sock",
            f"--tlscert={TLS_DIR}/tls.crt",
            f"--tlskey={TLS_DIR}/tls.key",
            f"--tlscacert={TLS_DIR}/ca.crt",
        ],
        "ports": [{"name": "buildkitd", "containerPort": BUILDKITD_PORT}],
        "readinessProbe": {"exec": {"command": ["buildctl", "debug", "workers"]}, "periodSeconds": 2},
        "volumeMounts": [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}],
    }
    if rootless:
        container["args"].append("--oci-worker-no-process-sandbox")
        container["securityContext"] = {
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "seccompProfile": {"type": "Unconfined"},
            "appArmorProfile": {"type": "Unconfined"},
        }
    else:
        container["securityContext"] = {"privileged": True}
    if settings.resources:
        container["resources"] = dict(settings.resources)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": settings.active_deadline_seconds,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 5,
        "containers": [container],
        "volumes": [{"name": "tls", "secret": {"secretName": ephemeral_tls_secret_name(name), "defaultMode": 0o440}}],
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.affinity:
        spec["affinity"] = dict(settings.affinity)
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                **settings.labels,
                **run_labels(pool, holder),
                **({UNTRUSTED_LABEL: "true"} if untrusted else {}),
            },
            "annotations": {
                **settings.annotations,
                RUN_URL_ANNOTATION: holder.run_url,
                WORKLOAD_KEY_ANNOTATION: holder.workload_key[:WORKLOAD_KEY_ANNOTATION_MAX],
            },
        },
        "spec": spec,
    }


def run_labels(pool: str, holder: HolderInfo) -> dict[str, str]:
    return {EPHEMERAL_LABEL: "true", EPHEMERAL_POOL_LABEL: pool, RUN_LABEL: run_id(holder)}


def tls_secret_manifest(
    namespace: str, pod_name: str, pod_uid: str, certificates: RunCertificates, labels: Mapping[str, str]
) -> dict:
    """The ephemeral builder's Secret (pure): its server pair and the CA that verifies the CI step,
    owned by the pod so that it goes when the pod goes."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": ephemeral_tls_secret_name(pod_name),
            "namespace": namespace,
            "labels": dict(labels),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid}],
        },
        "data": {
            "tls.crt": base64.b64encode(certificates.server_cert_pem).decode(),
            "tls.key": base64.b64encode(certificates.server_key_pem).decode(),
            "ca.crt": base64.b64encode(certificates.ca_pem).decode(),
        },
    }


def create_tls_secret(client: KubeClient, manifest: dict) -> None:
    """Create the run's Secret; one that exists already was not made by this run: refuse it."""
    meta = manifest["metadata"]
    try:
        client.request("POST", secrets_path(meta["namespace"]), body=manifest)
    except KubeConflict:
        raise ClusterError(
            f"Secret {meta['name']} already exists, made by someone else before this run: "
            f"not using ephemeral builder {meta['ownerReferences'][0]['name']}"
        ) from None


@dataclass(frozen=True)
class EphemeralBuilder:
    name: str
    uid: str
    address: str
    startup_seconds: float


def create_ephemeral_pod(client: KubeClient, manifest: dict) -> tuple[str, str]:
    namespace = manifest["metadata"]["namespace"]
    try:
        created = client.request("POST", pods_path(namespace), body=manifest).body
    except KubeNotFound:
        raise missing_namespace(namespace) from None
    return created["metadata"]["name"], created["metadata"]["uid"]


def missing_namespace(namespace: str) -> ClusterError:
    """A create in a namespace answered 404: the API server's NamespaceLifecycle admission says the
    namespace is not there. (Listing in a missing namespace is not an error: it is empty.)"""
    return ClusterError(
        f"namespace {namespace} does not exist (or this identity cannot see it): "
        "check --namespace / WARMBUILD_NAMESPACE, the namespace the pool was installed in"
    )


def _pod_ready_address(pod: dict) -> str | None:
    status = pod.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
    if status.get("phase") == "Running" and conditions.get("Ready") == "True" and status.get("podIP"):
        return f"tcp://{status['podIP']}:{BUILDKITD_PORT}"
    return None


def _pod_failed_reason(pod: dict) -> str | None:
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return (
            f"pod ended ({status.get('phase')}: {status.get('reason') or status.get('message') or 'no reason given'})"
        )
    for container in status.get("containerStatuses") or ():
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in (
            "ErrImagePull",
            "ImagePullBackOff",
            "InvalidImageName",
            "CreateContainerConfigError",
        ):
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip()
    return None


def wait_until_ready(client: KubeClient, namespace: str, name: str, timeout: float) -> str:
    """Watch the pod until it is Ready; return its buildkitd address. Raises BuilderStartFailed."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BuilderStartFailed(
                f"ephemeral builder {name} was not ready after {timeout:.0f}s: {pod_event_summary(client, namespace, name)}"
            )
        for _type, pod in client.watch(
            pods_path(namespace), {"fieldSelector": f"metadata.name={name}"}, timeout_seconds=max(1, int(remaining))
        ):
            if _type == "DELETED":
                raise BuilderStartFailed(f"ephemeral builder {name} was deleted while starting")
            address = _pod_ready_address(pod)
            if address:
                return address
            failed = _pod_failed_reason(pod)
            if failed:
                raise BuilderStartFailed(f"ephemeral builder {name} failed to start: {failed}")
            if time.monotonic() >= deadline:
                break


def pod_readiness(client: KubeClient, namespace: str, name: str) -> tuple[str | None, str | None]:
    """(buildkitd address if the pod is Ready, why it will never be if it failed), from one read;
    BuilderStartFailed if the pod is gone."""
    try:
        pod = client.request("GET", pods_path(namespace, name)).body
    except KubeNotFound:
        raise BuilderStartFailed(f"ephemeral builder {name} was deleted while starting") from None
    return _pod_ready_address(pod), _pod_failed_reason(pod)


def pod_event_summary(client: KubeClient, namespace: str, name: str) -> str:
    """The pod's events, newest last, as one line: what the scheduler or kubelet said."""
    try:
        events = (
            client.request(
                "GET", events_path(namespace), query={"fieldSelector": f"involvedObject.name={name}"}
            ).body.get("items")
            or []
        )
    except ClusterError as exc:
        return f"(events unavailable: {exc.message})"
    if not events:
        return "no events (is the scheduler running?)"
    events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    seen, parts = set(), []
    for event in events:
        text = f"{event.get('reason')}: {(event.get('message') or '').strip()}"
        if text not in seen:
            seen.add(text)
            parts.append(text)
    return "; ".join(parts[-3:])


def delete_ephemeral_pod(client: KubeClient, namespace: str, name: str) -> None:
    """Delete now (grace 0): an ephemeral builder has nothing to drain. Idempotent."""
    try:
        client.request(
            "DELETE",
            pods_path(namespace, name),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
        )
    except KubeNotFound:
        pass


def create_run_lease(
    client: KubeClient, namespace: str, pod_name: str, pod_uid: str, holder: HolderInfo, duration: int
) -> SlotLease:
    """The ephemeral pod's own Lease, renewed by the CI step: its expiry marks the pod orphaned."""
    now = client.server_now()
    body = new_lease_body(namespace, pod_name, {EPHEMERAL_LABEL: "true"}, pod_name, pod_uid, holder, duration, now)
    try:
        created = client.request("POST", leases_path(namespace), body=body).body
    except KubeConflict:
        raise ClusterError(f"a lease named {pod_name} already exists; run 'warmbuild gc'") from None
    except KubeNotFound:
        raise missing_namespace(namespace) from None
    return SlotLease(
        namespace=namespace,
        name=pod_name,
        builder=pod_name,
        holder=holder.identity,
        transitions=1,
        resource_version=parse_lease(created).resource_version,
        duration_seconds=duration,
        acquired_at=now,
    )
