"""Pool membership is verified, not declared: only pods whose controller is one of the pool's
StatefulSets (by uid) are builders; the pool label alone never makes a pod one."""

from __future__ import annotations

from warmbuild.kube.client import KubeResponse
from warmbuild.kube.names import pods_path, statefulsets_path
from warmbuild.kube.views import pod_view
from warmbuild.pool.membership import discover_builders, members

NS, POOL = "ns", "default"
POOL_SET_UID = "sts-uid-pool"


def pod(name: str, *, owner: dict | None = None, labels: dict | None = None, ip: str = "10.0.0.1") -> dict:
    meta = {"name": name, "uid": f"uid-{name}", "labels": {"warmbuild.dev/pool": POOL, **(labels or {})}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "buildkitd", "ports": [{"name": "buildkitd", "containerPort": 1234}]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def statefulset_ref(uid: str, controller: bool = True, kind: str = "StatefulSet") -> dict:
    return {"apiVersion": "apps/v1", "kind": kind, "name": "builders", "uid": uid, "controller": controller}


PODS = [
    pod("builders-0", owner=statefulset_ref(POOL_SET_UID), ip="10.0.0.10"),
    pod("builders-1", owner=statefulset_ref(POOL_SET_UID), ip="10.0.0.11"),
    pod("aaa-impostor"),  # hand-made, pool label only
    pod("aaa-named-like-a-builder", owner=statefulset_ref("sts-uid-another-team")),  # another StatefulSet
    pod("aaa-not-controller", owner=statefulset_ref(POOL_SET_UID, controller=False)),  # a plain owner reference
    pod("aaa-wrong-kind", owner=statefulset_ref(POOL_SET_UID, kind="ReplicaSet")),
    pod("warmbuild-default-ephemeral-x", labels={"warmbuild.dev/ephemeral": "true"}),
]


def test_only_pods_controlled_by_the_pools_statefulset_are_members():
    views = [pod_view(p) for p in PODS]
    assert [v.name for v in members(views, frozenset({POOL_SET_UID}))] == ["builders-0", "builders-1"]
    assert members(views, frozenset()) == []


def test_pod_view_reads_the_controller_reference():
    view = pod_view(PODS[0])
    assert (view.controller_kind, view.controller_uid) == ("StatefulSet", POOL_SET_UID)
    assert (pod_view(PODS[2]).controller_kind, pod_view(PODS[2]).controller_uid) == ("", "")
    assert pod_view(PODS[4]).controller_uid == ""  # controller: false is no controller


class FakePoolApi:
    """Answers the two lists discovery makes: StatefulSets and pods, each by the pool label."""

    def __init__(self, statefulsets: list[dict], pods: list[dict]):
        self.statefulsets, self.pods, self.queries = statefulsets, pods, []

    def request(self, method, path, body=None, query=None):
        self.queries.append((method, path, dict(query or {})))
        assert method == "GET" and query["labelSelector"] == f"warmbuild.dev/pool={POOL}"
        items = {statefulsets_path(NS): self.statefulsets, pods_path(NS): self.pods}[path]
        return KubeResponse(200, {"items": items}, None)


def test_discovery_lists_the_pools_statefulsets_and_never_offers_an_impostor():
    api = FakePoolApi([{"metadata": {"name": "builders", "uid": POOL_SET_UID}}], PODS)
    assert [b.name for b in discover_builders(api, NS, POOL)] == ["builders-0", "builders-1"]
    assert [path for _, path, _ in api.queries] == [statefulsets_path(NS), pods_path(NS)]


def test_without_a_statefulset_of_the_pool_there_are_no_builders():
    api = FakePoolApi([], PODS)
    assert discover_builders(api, NS, POOL) == ()


def test_an_admission_refusal_is_reported_in_the_policys_words_not_as_a_missing_permission():
    import json
    from types import SimpleNamespace

    import pytest

    from warmbuild.errors import ClusterError
    from warmbuild.kube.client import KubeClient

    client = SimpleNamespace(description="kubeconfig ci.yaml", host="https://127.0.0.1:6443")
    denied = json.dumps(
        {
            "message": "pods \"x\" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'p' denied request: "
            "warmbuild: ephemeral builder pods run the configured builder image only (moby/buildkit:v0.34.2)",
            "reason": "Forbidden",
        }
    ).encode()
    with pytest.raises(ClusterError) as refused:
        KubeClient._raise_for(client, 403, denied, "POST", pods_path(NS))
    assert refused.value.message == (
        "the API server refused to create pods in namespace ns: "
        "warmbuild: ephemeral builder pods run the configured builder image only (moby/buildkit:v0.34.2)"
    )
    rbac = json.dumps({"message": 'pods is forbidden: User "ci" cannot create resource "pods"'}).encode()
    with pytest.raises(ClusterError, match="missing permission: create pods in namespace ns"):
        KubeClient._raise_for(client, 403, rbac, "POST", pods_path(NS))
