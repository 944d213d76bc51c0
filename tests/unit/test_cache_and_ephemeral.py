"""Registry cache options, ephemeral pod manifests and settings, and what gc collects (pure)."""

from datetime import datetime, timedelta, timezone

import pytest

from warmbuild.cache import cache_options, default_cache_ref
from warmbuild.config import CacheSpec, Compression
from warmbuild.errors import InputError
from warmbuild.kube.names import POOL_LABEL
from warmbuild.kube.views import parse_lease
from warmbuild.pool.ephemeral import (
    EPHEMERAL_POOL_LABEL,
    EphemeralSettings,
    ephemeral_pod_manifest,
    load_ephemeral_settings,
)
from warmbuild.pool.gc import STARTUP_GRACE_SECONDS, find_garbage
from warmbuild.pool.leases import HolderInfo


def test_default_cache_ref_is_the_first_tags_repository():
    assert default_cache_ref(("127.0.0.1:5000/team/app:v1", "x/y:z")) == "127.0.0.1:5000/team/app:buildcache"
    assert default_cache_ref(("team/app@sha256:" + "a" * 64,)) == "team/app:buildcache"
    assert default_cache_ref(()) is None


@pytest.mark.parametrize(
    "path, policy, push, untrusted, imports, exports",
    [
        ("ephemeral", "never", False, False, 1, 1),  # the fallback always reads and refreshes it
        ("spill", "never", True, False, 1, 1),
        ("warm", "auto", True, False, 0, 1),
        ("warm", "auto", False, False, 0, 0),
        ("warm", "always", False, False, 0, 1),
        ("warm", "never", True, False, 0, 0),
        ("ephemeral", "always", True, True, 1, 0),  # untrusted: import only
    ],
)
def test_cache_options(path, policy, push, untrusted, imports, exports):
    options = cache_options(path, "r/app:buildcache", policy, push, untrusted)
    assert len(options.imports) == imports and len(options.exports) == exports
    for export in options.exports:
        assert export.ref == "r/app:buildcache" and export.max_mode and export.ignore_error
    assert all(i == CacheSpec.registry_import("r/app:buildcache") for i in options.imports)


def test_the_cache_warmbuild_writes_is_compressed_as_the_image_is():
    (export,) = cache_options("warm", "r/app:buildcache", "auto", True, False, Compression("zstd", 3)).exports
    assert export == CacheSpec.registry_export("r/app:buildcache", Compression("zstd", 3))
    assert export.compression == Compression("zstd", 3) and export.max_mode
    (default,) = cache_options("warm", "r/app:buildcache", "auto", True, False).exports
    assert default.compression == Compression()
    imports = cache_options("ephemeral", "r/app:buildcache", "auto", True, False, Compression("zstd")).imports
    assert imports == (CacheSpec("registry", ref="r/app:buildcache"),)  # an import carries no compression


def test_no_cache_ref_means_no_registry_cache():
    assert cache_options("ephemeral", None, "always", True, False).imports == ()


def test_ephemeral_pod_is_not_a_warm_builder_and_carries_its_run():
    holder = HolderInfo(identity="h", run_url="https://ci.example/run/1", workload_key="repo|Dockerfile|")
    pod = ephemeral_pod_manifest(EphemeralSettings(), "ns", "default", holder, "warmbuild-default-ephemeral-0a1b2c3d")
    labels = pod["metadata"]["labels"]
    assert POOL_LABEL not in labels and labels[EPHEMERAL_POOL_LABEL] == "default"
    assert pod["metadata"]["annotations"]["warmbuild.dev/run-url"] == "https://ci.example/run/1"
    assert pod["spec"]["activeDeadlineSeconds"] == 3600 and pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["containers"][0]["securityContext"] == {"privileged": True}


def test_ephemeral_settings_reach_the_pod(tmp_path):
    config = tmp_path / "ephemeral.yaml"
    config.write_text(
        "rootless: true\n"
        "resources: {requests: {cpu: '2', memory: 4Gi}}\n"
        "nodeSelector: {pool: builds}\n"
        "tolerations: [{key: builds, operator: Exists, effect: NoSchedule}]\n"
        "imagePullSecrets: [regcred]\n"
        "serviceAccountName: builder\n"
        "activeDeadlineSeconds: 900\n"
    )
    settings = load_ephemeral_settings(str(config), {"image": None})
    pod = ephemeral_pod_manifest(settings, "ns", "p", HolderInfo(identity="h"), "warmbuild-p-ephemeral-0a1b2c3d")
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert container["image"].endswith("-rootless") and container["securityContext"]["runAsUser"] == 1000
    assert container["resources"]["requests"]["memory"] == "4Gi"
    assert spec["nodeSelector"] == {"pool": "builds"} and spec["tolerations"][0]["key"] == "builds"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and spec["serviceAccountName"] == "builder"
    assert spec["activeDeadlineSeconds"] == 900


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("imagee: x\n", "unknown setting(s) imagee"),
        ("- a\n", "must be a mapping"),
        ("activeDeadlineSeconds: -1\n", "positive"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_ephemeral_settings_are_one_clear_line(tmp_path, text, fragment):
    config = tmp_path / "e.yaml"
    config.write_text(text)
    with pytest.raises(InputError) as err:
        load_ephemeral_settings(str(config))
    assert fragment in err.value.message and "\n" not in err.value.message


NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def pod(name, uid, age, phase="Running", deadline=3600):
    return {
        "metadata": {"name": name, "uid": uid, "creationTimestamp": (NOW - timedelta(seconds=age)).isoformat()},
        "spec": {"activeDeadlineSeconds": deadline},
        "status": {"phase": phase},
    }


def lease(name, owner_uid, renewed_ago, holder="h"):
    return parse_lease(
        {
            "metadata": {"name": name, "uid": f"l-{name}", "ownerReferences": [{"kind": "Pod", "uid": owner_uid}]},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "renewTime": (NOW - timedelta(seconds=renewed_ago)).isoformat(),
            },
        }
    )


def test_gc_collects_orphans_and_leaves_live_builds_alone():
    live, orphan, stale, ended, late = (
        pod("live", "u1", 30),
        pod("orphan", "u2", 60),
        pod("stale", "u3", STARTUP_GRACE_SECONDS + 10),
        pod("ended", "u4", 10, phase="Failed"),
        pod("late", "u5", 4000),
    )
    pods = [live, orphan, stale, ended, late, pod("builders-0", "w0", 9999)]
    leases = [
        lease("live", "u1", 2),
        lease("orphan", "u2", 40),
        lease("builders-0-slot-0", "w0", 1),
        lease("gone-slot-0", "deleted-pod", 1),
        lease("late", "u5", 1),
    ]
    found = {(g.kind, g.name): g.reason for g in find_garbage(pods, [live, orphan, stale, ended, late], leases, NOW)}
    assert set(found) == {
        ("pod", "orphan"),
        ("pod", "stale"),
        ("pod", "ended"),
        ("pod", "late"),
        ("lease", "gone-slot-0"),
    }
    assert "expired" in found[("pod", "orphan")] and "deadline" in found[("pod", "late")]
    assert find_garbage(pods, [live], leases[:1], NOW) == []  # idempotent once collected


def _security(pod: dict) -> dict:
    return pod["spec"]["containers"][0]["securityContext"]


def test_an_untrusted_build_gets_a_rootless_builder_labelled_for_its_network_policy():
    holder = HolderInfo(identity="h")
    name = "warmbuild-p-ephemeral-0a1b2c3d"
    untrusted = ephemeral_pod_manifest(EphemeralSettings(), "ns", "p", holder, name, untrusted=True)
    assert _security(untrusted).get("privileged") is not True
    assert _security(untrusted)["runAsUser"] == 1000
    assert untrusted["spec"]["containers"][0]["image"].endswith("-rootless")
    assert untrusted["metadata"]["labels"]["warmbuild.dev/untrusted"] == "true"
    trusted = ephemeral_pod_manifest(EphemeralSettings(), "ns", "p", holder, name)
    assert _security(trusted) == {"privileged": True}
    assert "warmbuild.dev/untrusted" not in trusted["metadata"]["labels"]
    # An explicit setting wins, for a pool whose platform team chose privileged builders on purpose.
    chosen = ephemeral_pod_manifest(EphemeralSettings(rootless=False), "ns", "p", holder, name, untrusted=True)
    assert _security(chosen) == {"privileged": True}
    assert chosen["metadata"]["labels"]["warmbuild.dev/untrusted"] == "true"


def test_rootless_must_be_a_boolean(tmp_path):
    config = tmp_path / "ephemeral.yaml"
    config.write_text("rootless: 'false'\n")
    with pytest.raises(InputError, match="rootless must be true or false"):
        load_ephemeral_settings(str(config))
