"""The one WorkloadKey: derived once, its full value, annotation form and hash; targets share a key by default."""

from pathlib import Path

from warmbuild.config import PoolFlags, build_request
from warmbuild.kube.names import WORKLOAD_KEY_ANNOTATION_MAX as ANNOTATION_MAX
from warmbuild.pipeline import plan_pool_build, workload_key_of
from warmbuild.pool.workload import derive_workload_key, key_hash


def test_default_key_is_repository_and_dockerfile_and_ignores_the_target():
    full = derive_workload_key("github.com/acme/ml", "Dockerfile", None)
    deps = derive_workload_key("github.com/acme/ml", "Dockerfile", "deps")
    assert full == deps
    assert full.value == "github.com/acme/ml|Dockerfile"
    assert full.source == "repository+dockerfile"
    assert derive_workload_key("github.com/acme/ml", "serve/Dockerfile", None) != full


def test_target_joins_the_key_only_when_asked():
    deps = derive_workload_key("github.com/acme/ml", "Dockerfile", "deps", by_target=True)
    full = derive_workload_key("github.com/acme/ml", "Dockerfile", None, by_target=True)
    assert deps.value == "github.com/acme/ml|Dockerfile|deps"
    assert full.value == "github.com/acme/ml|Dockerfile"
    assert deps.source == "repository+dockerfile+target"


def test_explicit_key_wins():
    key = derive_workload_key("github.com/acme/ml", "Dockerfile", "deps", explicit="team-a/train", by_target=True)
    assert key.value == "team-a/train" and key.source == "explicit"


def test_a_long_key_keeps_one_hash_of_its_full_value():
    long = derive_workload_key("", "", explicit="r" * 300 + "-a")
    other = derive_workload_key("", "", explicit="r" * 300 + "-b")
    assert len(long.annotation) == ANNOTATION_MAX
    assert long.annotation == other.annotation  # the text people read may collide ...
    assert long.hash != other.hash  # ... the hash, taken of the whole value, does not
    assert long.hash == key_hash(long.value)


def _request(tmp_path: Path, target=None):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM scratch\n")
    return build_request(context=str(tmp_path), file=str(tmp_path / "docker" / "Dockerfile"), target=target)


def test_the_key_names_the_dockerfile_relative_to_the_context(tmp_path):
    key = workload_key_of(_request(tmp_path, "deps"), PoolFlags(pool="p"), {"GITHUB_REPOSITORY": "acme/ml"})
    assert key.value == "acme/ml|docker/Dockerfile"


def test_uv_keys_on_the_dockerfile_the_user_named_not_the_rewritten_copy(tmp_path):
    rewritten = tmp_path / "tmp-uv"
    rewritten.mkdir()
    (rewritten / "Dockerfile").write_text("FROM scratch\n")
    request = build_request(context=str(tmp_path), file=str(rewritten / "Dockerfile"))
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    flags = PoolFlags(pool="p", named_dockerfile=tmp_path / "Dockerfile")
    assert workload_key_of(request, flags, {"GITHUB_REPOSITORY": "acme/ml"}).value == "acme/ml|Dockerfile"


def test_plan_carries_the_key_to_the_holder_and_placement(tmp_path):
    plan = plan_pool_build(
        _request(tmp_path), PoolFlags(pool="p", cache_key="k" * 400), {"GITHUB_REPOSITORY": "acme/ml"}
    )
    assert plan.placement.key.value == "k" * 400
    assert plan.placement.holder.workload_key == "k" * ANNOTATION_MAX
    assert plan.placement.holder.workload_key_hash == key_hash("k" * 400)
