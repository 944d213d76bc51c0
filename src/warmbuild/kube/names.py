"""Every name warmbuild writes into the cluster, its length limit, and every API path it calls.

Decision: one module, pure (no IO, no warmbuild imports), so a label or annotation is spelled once
and a path once; the rest of the package imports them from here. Helm templates and the testbed
spell the same names in YAML and shell: keep them in step with this file.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------ labels (≤ 63 chars)

POOL_LABEL = "warmbuild.dev/pool"  # the pool's StatefulSets, builder pods, slot Leases: the pool's name
BUILDER_LABEL = "warmbuild.dev/builder"  # slot Leases: the builder pod's name
EPHEMERAL_LABEL = "warmbuild.dev/ephemeral"  # ephemeral builder pods and their run Leases: "true"
EPHEMERAL_POOL_LABEL = "warmbuild.dev/ephemeral-for"  # not the pool label: it must never count as a warm builder
RUN_LABEL = "warmbuild.dev/run"  # ephemeral builder pods: a hash of the CI run
UNTRUSTED_LABEL = "warmbuild.dev/untrusted"  # ephemeral builders of untrusted builds: "true" (their own NetworkPolicy)
HISTORY_LABEL = "warmbuild.dev/history"  # the history ConfigMap: the pool's name

# --------------------------------------------------------------------------------------- annotations

SLOTS_ANNOTATION = "warmbuild.dev/slots"  # builder pods: how many builds at once
DRAINING_ANNOTATION = "warmbuild.dev/draining"  # builder pods: "true" while `warmbuild drain` runs
RUN_URL_ANNOTATION = "warmbuild.dev/run-url"  # slot/run Leases, ephemeral pods: the CI run's URL
WORKLOAD_KEY_ANNOTATION = "warmbuild.dev/workload-key"  # slot/run Leases, ephemeral pods: the key's text, capped
WORKLOAD_KEY_HASH_ANNOTATION = "warmbuild.dev/workload-key-hash"  # slot/run Leases: the hash of the whole key
# slot Leases the scheduler took: SHA-256 (hex) of the release token only the acquirer learned
RELEASE_TOKEN_HASH_ANNOTATION = "warmbuild.dev/release-token-hash"
# a builder's health Lease (`health_lease_name`): why its last solve failed for an infrastructure
# reason (disk full, lost, unreachable…), since when (API-server time) and who said so (holder
# identity and CI run URL). Placement skips the builder for a cool-down after `since`; a build that
# succeeds there afterwards removes all three.
UNHEALTHY_ANNOTATION = "warmbuild.dev/unhealthy"
UNHEALTHY_SINCE_ANNOTATION = "warmbuild.dev/unhealthy-since"
UNHEALTHY_BY_ANNOTATION = "warmbuild.dev/unhealthy-by"

# ------------------------------------------------------ TokenReview user.extra keys (verified CI claims)
# Set by the API server's JWT authenticators for CI platforms' OIDC tokens, as the chart renders them
# (templates/apiserver-authentication.yaml): one value each, the same keys for GitHub and GitLab.

VERIFIED_ISSUER = "warmbuild.dev/issuer"  # "github" | "gitlab"
VERIFIED_REPOSITORY = "warmbuild.dev/repository"  # GitHub repository, GitLab project_path
VERIFIED_REF = "warmbuild.dev/ref"  # always a full ref: refs/heads/..., refs/tags/..., refs/pull/...
VERIFIED_EVENT = "warmbuild.dev/event"  # GitHub event_name, GitLab pipeline_source
VERIFIED_PROTECTED = "warmbuild.dev/protected"  # "true" | "false": the ref is protected
VERIFIED_FORK = "warmbuild.dev/fork"  # "true" | "false": the event may run a change from outside
VERIFIED_WORKFLOW = "warmbuild.dev/workflow"  # GitHub job_workflow_ref, GitLab ci_config_ref_uri
VERIFIED_AUDIENCE = "warmbuild.dev/audience"  # the token's aud claim (one or more values)

# ---------------------------------------------------------------------------------------------- limits

LABEL_VALUE_MAX = 63  # Kubernetes: a label value is at most 63 characters
ANNOTATIONS_TOTAL_MAX = 256 * 1024  # Kubernetes: all annotation keys and values of an object together
# warmbuild's own cap on the workload-key text: readable in `pool status`, small on every Lease.
# The text is cut, never the hash: readers compare the stored WORKLOAD_KEY_HASH_ANNOTATION.
WORKLOAD_KEY_ANNOTATION_MAX = 250
UNHEALTHY_REASON_MAX = 250  # the reason's text on the health Lease, cut for `pool status`
# The longest slot Lease a build may ask for: a holder that dies keeps its slot at most this long.
MAX_LEASE_SECONDS = 300


def history_configmap_name(pool: str) -> str:
    return f"warmbuild-history-{pool}"


def slot_lease_name(builder_name: str, slot: int) -> str:
    return f"{builder_name}-slot-{slot}"


def health_lease_name(builder_name: str) -> str:
    """A builder's health Lease: never held, only annotated (a CI identity may update Leases, not pods)."""
    return f"{builder_name}-health"


def ephemeral_pod_name(pool: str, suffix: str) -> str:
    """An ephemeral builder's pod name, chosen by the CI step (its certificate names it before the pod exists)."""
    return f"warmbuild-{pool}-ephemeral-{suffix}"


def ephemeral_tls_secret_name(pod_name: str) -> str:
    """The Secret with an ephemeral builder's per-run certificate: the only Secret its pod mounts."""
    return f"{pod_name}-tls"


# ------------------------------------------------------------------------------------------ API paths

TOKEN_REVIEWS_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def _collection(base: str, name: str | None) -> str:
    return f"{base}/{name}" if name else base


def pods_path(namespace: str, name: str | None = None) -> str:
    return _collection(f"/api/v1/namespaces/{namespace}/pods", name)


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/events"


def configmaps_path(namespace: str, name: str | None = None) -> str:
    return _collection(f"/api/v1/namespaces/{namespace}/configmaps", name)


def secrets_path(namespace: str, name: str | None = None) -> str:
    return _collection(f"/api/v1/namespaces/{namespace}/secrets", name)


def statefulsets_path(namespace: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/statefulsets"


def leases_path(namespace: str, name: str | None = None) -> str:
    return _collection(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", name)
