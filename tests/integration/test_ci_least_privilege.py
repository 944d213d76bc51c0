"""Least privilege, enforced by the API server: what a CI identity may do to the pool, and what it may not.

Each test is one attack by the testbed's CI identity (WARMBUILD_CI_KUBECONFIG, bound to the chart's
CI Role and admission policy by testbed/up) or, for the impostor, by an admin. Pod creations and
deletions are sent with dryRun=All: admission (RBAC, the ValidatingAdmissionPolicy) runs in full and
nothing is stored, so an attack that the API server would admit leaves no pod behind either. Each
refusal is checked by the policy's own message, as the API server returns it.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
from poolkit import wait_for

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, config  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from helm_render import render  # noqa: E402

from warmbuild.kube.client import connect  # noqa: E402
from warmbuild.pool.affinity import preference_order  # noqa: E402
from warmbuild.pool.ephemeral import EphemeralSettings, ephemeral_pod_manifest, new_pod_name  # noqa: E402
from warmbuild.pool.leases import HolderInfo, list_pool_leases, release_slot  # noqa: E402
from warmbuild.pool.membership import discover_builders  # noqa: E402
from warmbuild.pool.placement import PlacementRequest, acquire_build_slot  # noqa: E402
from warmbuild.pool.workload import explicit_key  # noqa: E402

POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
CI_USER = "system:serviceaccount:warmbuild:warmbuild-ci"


@pytest.fixture(scope="module")
def ci_core():
    return client.CoreV1Api(config.new_client_from_config(config_file=os.environ["WARMBUILD_CI_KUBECONFIG"]))


@pytest.fixture(scope="module")
def ci_coordination():
    return client.CoordinationV1Api(config.new_client_from_config(config_file=os.environ["WARMBUILD_CI_KUBECONFIG"]))


@pytest.fixture(scope="module")
def admin_core(core):
    return core


def warmbuild_pod(namespace: str = NAMESPACE, **settings) -> dict:
    """The ephemeral builder pod exactly as `warmbuild build` makes it, with a name of its own."""
    return ephemeral_pod_manifest(
        EphemeralSettings(**settings),
        namespace,
        POOL,
        HolderInfo(identity="attack", run_url="https://ci.example/1"),
        new_pod_name(POOL),
    )


def refusal(call, *args, **kwargs) -> tuple[int, str]:
    """(HTTP status, the API server's message) of a refused request; fails the test if it was admitted."""
    try:
        call(*args, **kwargs)
    except ApiException as error:
        return error.status, json.loads(error.body)["message"]
    raise AssertionError("the API server admitted it")


def statefulset_ref(admin) -> dict:
    sets = admin.request(
        "GET",
        f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets",
        query={"labelSelector": f"warmbuild.dev/pool={POOL}"},
    ).body["items"]
    meta = sets[0]["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }


def with_changes(pod: dict, change) -> dict:
    pod = copy.deepcopy(pod)
    change(pod)
    return pod


def container(pod: dict) -> dict:
    return pod["spec"]["containers"][0]


ATTACKS = {
    # root on the node: the host's filesystem, then a shell in the builder image
    "hostPath": (
        lambda p: (
            p["spec"].__setitem__("volumes", [{"name": "host", "hostPath": {"path": "/"}}]),
            container(p).__setitem__("volumeMounts", [{"name": "host", "mountPath": "/host"}]),
        ),
        "warmbuild: hostPath volumes are refused for ephemeral builder pods",
    ),
    "hostPID": (
        lambda p: p["spec"].__setitem__("hostPID", True),
        "warmbuild: host namespaces (hostNetwork, hostPID, hostIPC) are refused",
    ),
    # a pod that joins the pool and is handed other jobs' build contexts and secrets
    "pool label": (
        lambda p: p["metadata"]["labels"].__setitem__("warmbuild.dev/pool", POOL),
        "warmbuild: the pool label warmbuild.dev/pool is refused",
    ),
    # the builders' own TLS secret, presented by a pod of the attacker's
    "builders' secret": (
        lambda p: p["spec"].__setitem__(
            "volumes", [{"name": "tls", "secret": {"secretName": "warmbuild-builder-tls"}}]
        ),
        "warmbuild: an ephemeral builder pod may mount only its own run certificate Secret (<pod name>-tls)",
    ),
    "foreign image": (
        lambda p: container(p).__setitem__("image", "alpine:3"),
        "warmbuild: ephemeral builder pods run the configured builder image only",
    ),
    "own command": (
        lambda p: container(p).__setitem__("command", ["sh", "-c", "nsenter -t 1 -m -u -i -n sh"]),
        "warmbuild: ephemeral builder containers run the image's buildkitd with warmbuild's flags only",
    ),
    "insecure entitlement": (
        lambda p: container(p)["args"].append("--allow-insecure-entitlement=security.insecure"),
        "warmbuild: ephemeral builder containers run the image's buildkitd with warmbuild's flags only",
    ),
    "a mounted token": (
        lambda p: p["spec"].__setitem__("automountServiceAccountToken", True),
        "warmbuild: ephemeral builder pods may mount emptyDir volumes and their own certificate Secret only",
    ),
    "not an ephemeral builder": (
        lambda p: p["metadata"]["labels"].__setitem__("warmbuild.dev/ephemeral", "false"),
        "warmbuild: CI steps may create ephemeral builder pods only",
    ),
}


POLICY = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/warmbuild-warmbuild-ephemeral-builders"


def test_the_charts_admission_policy_is_in_force_and_type_checks_clean():
    admin = connect(os.environ["KUBECONFIG"])

    def checked():
        policy = admin.request("GET", POLICY).body
        status = policy.get("status") or {}
        return status if status.get("observedGeneration") == policy["metadata"]["generation"] else None

    status = wait_for(checked, 30, interval=0.5, what="the API server to type-check the policy")
    assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status


def test_warmbuilds_own_ephemeral_pods_are_admitted_for_the_ci_identity(ci_core):
    for settings in ({}, {"rootless": True}):
        created = ci_core.create_namespaced_pod(NAMESPACE, warmbuild_pod(**settings), dry_run="All")
        assert created.metadata.labels["warmbuild.dev/ephemeral"] == "true"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_ci_identitys_pod_outside_warmbuilds_shape_is_refused_by_the_api_server(ci_core, attack):
    change, message = ATTACKS[attack]
    status, text = refusal(
        ci_core.create_namespaced_pod, NAMESPACE, with_changes(warmbuild_pod(), change), dry_run="All"
    )
    assert status == 403, text
    assert "ValidatingAdmissionPolicy" in text and message in text, text


def run_secret(pod_name: str, **changes) -> dict:
    """An ephemeral builder's run certificate Secret as warmbuild makes it (owned by its pod)."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": f"{pod_name}-tls",
            "namespace": NAMESPACE,
            "labels": {"warmbuild.dev/ephemeral": "true"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": str(uuid.uuid4())}],
        },
        "data": {"tls.crt": "", "tls.key": ""},
    }
    secret.update(changes)
    return secret


SECRET_ATTACKS = {
    # a token for a ServiceAccount of the namespace, filled in by the token controller
    "service account token": (
        lambda name: run_secret(
            name,
            type="kubernetes.io/service-account-token",
            metadata={
                "name": f"{name}-tls",
                "namespace": NAMESPACE,
                "labels": {"warmbuild.dev/ephemeral": "true"},
                "annotations": {"kubernetes.io/service-account.name": "warmbuild-builder"},
            },
        ),
        "warmbuild: CI steps may create Secrets of type kubernetes.io/tls only",
    ),
    # a Secret in the builders' name, for a pod that would then mount it
    "the builders' name": (
        lambda name: run_secret(name, metadata={**run_secret(name)["metadata"], "name": "warmbuild-builder-tls"}),
        "warmbuild: a run certificate Secret is named <ephemeral builder pod>-tls",
    ),
    "no owner": (
        lambda name: run_secret(name, metadata={**run_secret(name)["metadata"], "ownerReferences": []}),
        "warmbuild: a run certificate Secret is owned by its ephemeral builder pod",
    ),
}


def test_warmbuilds_own_run_certificate_secret_is_admitted_for_the_ci_identity(ci_core):
    created = ci_core.create_namespaced_secret(NAMESPACE, run_secret(new_pod_name(POOL)), dry_run="All")
    assert created.type == "kubernetes.io/tls"


@pytest.mark.parametrize("attack", sorted(SECRET_ATTACKS))
def test_a_ci_identitys_secret_outside_the_run_certificate_shape_is_refused(ci_core, attack):
    make, message = SECRET_ATTACKS[attack]
    status, text = refusal(ci_core.create_namespaced_secret, NAMESPACE, make(new_pod_name(POOL)), dry_run="All")
    assert status == 403, text
    assert "ValidatingAdmissionPolicy" in text and message in text, text


def test_a_ci_identitys_owner_referenced_pod_is_refused(ci_core):
    admin = connect(os.environ["KUBECONFIG"])
    pod = warmbuild_pod()
    pod["metadata"]["ownerReferences"] = [statefulset_ref(admin)]  # as if the pool's StatefulSet made it
    status, text = refusal(ci_core.create_namespaced_pod, NAMESPACE, pod, dry_run="All")
    assert status == 403 and "warmbuild: owner references are refused on ephemeral builder pods" in text, text


def test_the_ci_identity_cannot_delete_a_builder_pod(ci_core):
    admin = connect(os.environ["KUBECONFIG"])
    builder = discover_builders(admin, NAMESPACE, POOL)[0]
    status, text = refusal(ci_core.delete_namespaced_pod, builder.name, NAMESPACE, dry_run="All")
    assert status == 403 and "warmbuild: CI steps may delete ephemeral builder pods only" in text, text


def test_the_ci_identity_cannot_delete_a_lease(ci_coordination):
    ci = connect(os.environ["WARMBUILD_CI_KUBECONFIG"])
    request = PlacementRequest(
        NAMESPACE,
        POOL,
        explicit_key(f"lease-{uuid.uuid4().hex[:8]}"),
        HolderInfo(identity="victim"),
        max_wait_seconds=0,
    )
    grant = acquire_build_slot(ci, request)  # a slot someone holds right now
    try:
        status, text = refusal(ci_coordination.delete_namespaced_lease, grant.lease.name, NAMESPACE, dry_run="All")
        assert status == 403 and 'cannot delete resource "leases"' in text, text
    finally:
        release_slot(ci, NAMESPACE, grant.lease.name, grant.lease.holder)


def test_the_ci_identity_writes_the_pools_history_and_no_other_configmap(ci_core):
    history = f"warmbuild-history-{POOL}"
    ci_core.patch_namespaced_config_map(history, NAMESPACE, {"metadata": {"annotations": {}}}, dry_run="All")
    for attempt in (
        lambda: ci_core.patch_namespaced_config_map(
            "kube-root-ca.crt", NAMESPACE, {"data": {"ca.crt": "attacker's CA"}}, dry_run="All"
        ),
        lambda: ci_core.create_namespaced_config_map(
            NAMESPACE,
            {"metadata": {"name": "warmbuild-scheduler"}, "data": {"auth-config.yaml": "grants: []"}},
            dry_run="All",
        ),
    ):
        status, text = refusal(attempt)
        assert status == 403 and "cannot " in text and 'resource "configmaps"' in text, text


# ------------------------------------------------------------------------- a pool with rootless builders


@pytest.fixture
def rootless_pool_namespace(admin_core):
    """The chart installed for a rootless pool in a namespace of its own, its CI Role bound to the
    testbed's CI identity: only its RBAC and admission objects (no builders are needed to refuse)."""
    from kubernetes import dynamic

    namespace = f"warmbuild-rootless-{uuid.uuid4().hex[:6]}"
    docs = render(
        release="rootless",
        namespace=namespace,
        extra=(
            "--set",
            "builder.mode=rootless",
            "--set",
            "rbac.ci.serviceAccount.create=false",
            "--set-json",
            'rbac.ci.extraSubjects=[{"kind":"ServiceAccount","name":"warmbuild-ci","namespace":"warmbuild"}]',
        ),
    )
    wanted = [
        d
        for d in docs
        if d["kind"]
        in ("Role", "RoleBinding", "ConfigMap", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    ]
    resources = dynamic.DynamicClient(admin_core.api_client).resources
    admin_core.create_namespace({"metadata": {"name": namespace}})
    try:
        for doc in wanted:
            resources.get(api_version=doc["apiVersion"], kind=doc["kind"]).server_side_apply(
                body=doc,
                name=doc["metadata"]["name"],
                namespace=doc["metadata"].get("namespace"),
                field_manager="warmbuild-attack-test",
                force_conflicts=True,
            )
        time.sleep(2)  # the policy and the RBAC objects reach the API server's caches
        yield namespace
    finally:
        for doc in wanted:
            if not doc["metadata"].get("namespace"):
                resources.get(api_version=doc["apiVersion"], kind=doc["kind"]).delete(name=doc["metadata"]["name"])
        admin_core.delete_namespace(namespace)


def test_in_a_rootless_pool_a_ci_identitys_privileged_pod_is_refused(ci_core, rootless_pool_namespace):
    namespace = rootless_pool_namespace
    rootless = warmbuild_pod(namespace, rootless=True)
    wait_for(
        lambda: _admitted(ci_core, namespace, rootless), 20, interval=0.5, what="the rootless pool's Role and policy"
    )
    privileged = warmbuild_pod(namespace)
    # The new policy reaches the API server's admission cache a moment after it is stored.
    wait_for(
        lambda: not _admitted(ci_core, namespace, privileged), 30, interval=0.5, what="the rootless policy in force"
    )
    status, text = refusal(ci_core.create_namespaced_pod, namespace, privileged, dry_run="All")
    assert status == 403, text
    assert "warmbuild: privileged containers are refused: this pool's ephemeral builders run rootless" in text, text


def _admitted(ci_core, namespace: str, pod: dict) -> bool:
    try:
        ci_core.create_namespaced_pod(namespace, pod, dry_run="All")
        return True
    except ApiException:
        return False


# -------------------------------------------------------------------------------------- the impostor


def impostor_manifest(admin, builders: list[str], key: str) -> dict:
    """A copy of a builder pod with the pool label, named to rank first for `key` among the builders."""
    template = admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{builders[0]}").body
    name = next(
        candidate
        for candidate in (f"impostor-{i}" for i in range(10_000))
        if preference_order(key, [*builders, candidate])[0] == candidate
    )
    spec = {k: v for k, v in template["spec"].items() if k not in ("nodeName", "hostname", "subdomain")}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"warmbuild.dev/pool": POOL, "warmbuild.dev/test": "impostor"},
            "annotations": {"warmbuild.dev/slots": "2"},
        },
        "spec": spec,
    }


def test_an_impostor_with_the_pool_label_is_never_chosen_even_when_it_ranks_first(admin_core):
    admin = connect(os.environ["KUBECONFIG"])
    ci = connect(os.environ["WARMBUILD_CI_KUBECONFIG"])
    builders = [b.name for b in discover_builders(ci, NAMESPACE, POOL)]
    assert len(builders) == 3
    keys = [f"victim-{uuid.uuid4().hex[:8]}-{i}" for i in range(20)]
    impostor = impostor_manifest(admin, builders, keys[0])
    admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=impostor)
    name = impostor["metadata"]["name"]
    try:
        # Ready, with an address and a real buildkitd behind it: everything a builder shows.
        def ready():
            pod = admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}").body
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or ()}
            return conditions.get("Ready") == "True" and pod["status"].get("podIP")

        wait_for(ready, 60, interval=0.5, what="the impostor to be Ready")
        assert preference_order(keys[0], [*builders, name])[0] == name  # it would rank first for the victim
        granted = []
        for key in keys:
            request = PlacementRequest(
                NAMESPACE, POOL, explicit_key(key), HolderInfo(identity=f"victim-{key}"), max_wait_seconds=0
            )
            grant = acquire_build_slot(ci, request)
            try:
                granted.append(grant.builder.name)
            finally:
                release_slot(ci, NAMESPACE, grant.lease.name, grant.lease.holder)
        assert name not in granted, granted
        assert set(granted) <= set(builders)
        # Its slot Leases were never even created.
        assert not [lease for lease in list_pool_leases(admin, NAMESPACE, POOL) if lease.startswith(name)]
    finally:
        admin.request(
            "DELETE",
            f"/api/v1/namespaces/{NAMESPACE}/pods/{name}",
            body={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
        )
        wait_for(
            lambda: (
                not admin.request(
                    "GET",
                    f"/api/v1/namespaces/{NAMESPACE}/pods",
                    query={"labelSelector": "warmbuild.dev/test=impostor"},
                ).body["items"]
            ),
            30,
            what="the impostor to be gone",
        )
