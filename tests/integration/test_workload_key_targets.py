"""Targets of one Dockerfile share a workload key by default, so they share a warm builder's layers.

The default key is repository + Dockerfile path. A `--target deps` build computes the stages the
full build starts from: keyed together, the full build lands on the same builder and finds them
cached; keyed apart (`--cache-key-target`, the old default), each target has its own affine builder
and the full build runs the dependency stage again. The repository is chosen so that, on today's
pool, the two per-target keys do rank different builders first — the case the default avoids.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from poolkit import held_slots, wait_for

from warmbuild.pool.affinity import preference_order
from warmbuild.pool.membership import discover_builders

POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")

if not os.environ.get("WARMBUILD_CI_KUBECONFIG"):
    if os.environ.get("WARMBUILD_REQUIRE_TESTBED") == "1":
        raise RuntimeError('the testbed is not up: eval "$(testbed/up)"')
    pytest.skip("the testbed is not up", allow_module_level=True)


@pytest.fixture
def builders(admin) -> list[str]:
    wait_for(lambda: len(discover_builders(admin, NAMESPACE, POOL)) == 3, 120, what="3 ready builders")
    wait_for(lambda: not held_slots(admin), 30, what="all slots free before the test")
    return [b.name for b in discover_builders(admin, NAMESPACE, POOL)]


def split_repository(builders: list[str]) -> str:
    """A repository whose per-target keys rank different builders first on this pool."""
    for index in range(1000):
        repository = f"acme/targets-{index}"
        deps = preference_order(f"{repository}|Dockerfile|deps", builders)[0]
        full = preference_order(f"{repository}|Dockerfile", builders)[0]
        if deps != full:
            return repository
    raise AssertionError("no repository splits the targets: is the pool one builder?")


def multi_stage_app(tmp_path, registry: str):
    nonce = uuid.uuid4().hex  # this test's layers are new to every builder
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text('print("hello")\n')
    (app / "Dockerfile").write_text(
        f"ARG REGISTRY={registry}\n"
        "FROM ${REGISTRY}/library/python:3.11-slim AS deps\n"
        f'RUN python -c "import time; time.sleep(1)" && echo deps-{nonce} > /deps.txt\n'
        "FROM deps AS app\n"
        "COPY app.py /srv/app.py\n"
    )
    return app, nonce


def build(run_warmbuild, app, tmp_path, name: str, repository: str, *extra: str) -> dict:
    result = tmp_path / f"{name}.json"
    done = run_warmbuild(
        "build",
        str(app),
        "--pool",
        POOL,
        "--fallback",
        "wait",
        "--max-wait",
        "60",
        "--result-file",
        str(result),
        "--state-file",
        str(tmp_path / f"{name}-state.json"),
        *extra,
        env={
            "KUBECONFIG": os.environ["WARMBUILD_CI_KUBECONFIG"],
            "WARMBUILD_BUILDER": "",
            "GITHUB_REPOSITORY": repository,
            "WARMBUILD_CACHE_KEY": "",
            "WARMBUILD_CACHE_KEY_TARGET": "",
        },
    )
    assert done.returncode == 0, done.stderr
    return json.loads(result.read_text())


def deps_step(result: dict, nonce: str) -> dict:
    return next(s for s in result["steps"] if f"deps-{nonce}" in s["name"])


@pytest.mark.parametrize("keyed", ["together", "apart"])
def test_a_full_build_after_its_deps_target(keyed, builders, tmp_path, registry, run_warmbuild, admin):
    repository = split_repository(builders)
    app, nonce = multi_stage_app(tmp_path, registry)
    extra = ("--cache-key-target",) if keyed == "apart" else ()
    deps = build(run_warmbuild, app, tmp_path, "deps", repository, "--target", "deps", *extra)
    full = build(run_warmbuild, app, tmp_path, "full", repository, *extra)
    summary = {
        "deps builder": deps["placement"]["builder_name"],
        "full builder": full["placement"]["builder_name"],
        "full cache": f"{full['cache']['cached_steps']}/{full['cache']['total_steps']}",
        "deps stage cached in the full build": deps_step(full, nonce)["cached"],
        "full build seconds": full["timings"]["build_seconds"],
    }
    print(f"targets keyed {keyed}: {summary}")
    assert deps["placement"]["affine"] and full["placement"]["affine"], summary
    if keyed == "together":
        assert full["placement"]["builder_name"] == deps["placement"]["builder_name"], summary
        assert deps_step(full, nonce)["cached"] is True, summary
    else:
        assert full["placement"]["builder_name"] != deps["placement"]["builder_name"], summary
        assert deps_step(full, nonce)["cached"] is False, summary
    assert not held_slots(admin)
