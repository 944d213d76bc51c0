"""The client's side of the trust boundary on the real testbed: an untrusted build cannot reach a
direct builder nor write a cache; the state file stays out of the build context; a namespace that
does not exist is one line. Each test runs the real `warmbuild` CLI as a CI job would.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from pathlib import Path

import pytest
import requests
from poolkit import held_slots, wait_for

from warmbuild.kube.names import EPHEMERAL_LABEL, pods_path
from warmbuild.pool.membership import discover_builders

POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
EVENTS = Path(__file__).resolve().parent.parent / "fixtures" / "github-events"
DOCKERFILE_STEP = re.compile(r"^\[(\S+ )?\d+/\d+\] ")
MANIFEST_TYPES = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"


def ephemeral_pods(client) -> list[str]:
    query = {"labelSelector": f"{EPHEMERAL_LABEL}=true"}
    return [p["metadata"]["name"] for p in client.request("GET", pods_path(NAMESPACE), query=query).body["items"]]


@pytest.fixture
def quiet_pool(ci):
    wait_for(lambda: len(discover_builders(ci, NAMESPACE, POOL)) == 3, 120, what="3 ready builders")
    wait_for(lambda: not held_slots(ci), 30, what="all slots free before the test")
    yield
    wait_for(lambda: not held_slots(ci), 30, what="all slots free after the test")
    wait_for(lambda: not ephemeral_pods(ci), 30, what="no ephemeral builder left after the test")


def no_ci_markers(**extra: str) -> dict[str, str]:
    """Blank the CI variables this machine may have, so each test states the CI it plays."""
    blank = {
        name: ""
        for name in os.environ
        if name.startswith(("GITHUB_", "CI_", "RUNNER_")) or name in ("GITLAB_CI", "CHANGE_FORK", "BUILD_TAG")
    }
    return {**blank, "WARMBUILD_STATE_FILE": "", "WARMBUILD_POOL": "", **extra}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warmbuild: error: ")]


def test_an_untrusted_build_is_refused_a_direct_builder(tiny_app, builder, registry, run_warmbuild, tmp_path):
    fork_event = {
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": str(EVENTS / "pull_request.fork.json"),
    }
    cases = [
        (["--builder", builder, "--untrusted"], {}, "--builder"),
        ([], {"WARMBUILD_BUILDER": builder, **fork_event}, "WARMBUILD_BUILDER"),
        # A review event on a fork's pull request used to count as trusted.
        (["--builder", builder], {**fork_event, "GITHUB_EVENT_NAME": "pull_request_review"}, "--builder"),
        # A pull request whose event file is gone: cannot tell, so untrusted.
        (["--builder", builder], {**fork_event, "GITHUB_EVENT_PATH": str(tmp_path / "gone.json")}, "--builder"),
    ]
    for argv, env, source in cases:
        result_file = tmp_path / f"r-{uuid.uuid4().hex[:6]}.json"
        done = run_warmbuild(
            "build",
            str(tiny_app),
            "--build-arg",
            f"REGISTRY={registry}",
            "--result-file",
            str(result_file),
            *argv,
            env=no_ci_markers(**env),
        )
        assert done.returncode == 2, (argv, env, done.stderr[-2000:])
        (line,) = done.stderr.splitlines()
        assert line.startswith("warmbuild: error: this build is untrusted (")
        assert f"{source} is refused: a direct builder is shared and warm" in line
        assert not result_file.exists()  # refused before the builder was contacted
    # --trusted is the explicit override: the same fork event builds on the direct builder.
    done = run_warmbuild(
        "build",
        str(tiny_app),
        "--build-arg",
        f"REGISTRY={registry}",
        "--result-file",
        str(tmp_path / "trusted.json"),
        "--builder",
        builder,
        "--trusted",
        env=no_ci_markers(**fork_event),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "trusted.json").read_text())["placement"]["path"] == "direct"


def test_an_untrusted_pool_build_writes_no_cache_the_user_asked_for(
    quiet_pool, tmp_path, registry, unique_repo, run_warmbuild
):
    app = tmp_path / "fork-change"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"ARG REGISTRY\nFROM ${{REGISTRY}}/library/python:3.11-slim\nRUN echo {uuid.uuid4().hex} > /planted\n"
    )
    local_cache = tmp_path / "local-cache"
    done = run_warmbuild(
        "build",
        str(app),
        "--pool",
        POOL,
        "--build-arg",
        f"REGISTRY={registry}",
        "--tag",
        f"{unique_repo}:pr",
        "--push",
        "--cache-to",
        f"type=registry,ref={unique_repo}:shared,mode=max",
        "--cache-to",
        f"type=local,dest={local_cache}",
        "--result-file",
        str(tmp_path / "r.json"),
        "--state-file",
        str(tmp_path / "s.json"),
        env=no_ci_markers(
            KUBECONFIG=os.environ["WARMBUILD_CI_KUBECONFIG"],
            WARMBUILD_BUILDER="",
            GITHUB_EVENT_NAME="pull_request_target",
            GITHUB_EVENT_PATH=str(EVENTS / "pull_request_target.fork.json"),
        ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warmbuild: warning: --cache-to dropped (2 export(s)): an untrusted build never writes a cache" in (
        done.stderr
    )
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["placement"]["path"] == "ephemeral" and "untrusted" in result["placement"]["reason"]
    assert "--cache-to dropped (2 export(s)): an untrusted build never writes a cache" in result["warnings"]
    host, _, repo = unique_repo.partition("/")
    for tag in ("shared", "buildcache"):  # the user's cache, and warmbuild's own
        manifest = requests.get(
            f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10
        )
        assert manifest.status_code == 404, tag
    assert requests.get(f"http://{host}/v2/{repo}/tags/list", timeout=10).json()["tags"] == ["pr"]
    assert not local_cache.exists()


def test_building_the_working_directory_twice_caches_every_step_the_second_time(
    quiet_pool, tmp_path, registry, run_warmbuild
):
    """`warmbuild build .` from the context directory, without --state-file, as a new user runs it:
    the state file must not change the context, or `COPY . /srv/` and every step after it re-run."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(f'print("state file {uuid.uuid4().hex}")\n')
    (app / "Dockerfile").write_text(
        "ARG REGISTRY\nFROM ${REGISTRY}/library/python:3.11-slim\nCOPY . /srv/\n"
        "RUN ls -la /srv > /srv-listing && python /srv/app.py\n"
    )
    runtime = tmp_path / "runtime"  # the user's XDG_RUNTIME_DIR
    runtime.mkdir()
    job = f"{uuid.uuid4().int % 10**9}"
    results = []
    for attempt in range(2):
        result_file = tmp_path / f"result-{attempt}.json"  # a CI artifact; kept out of the context here
        done = run_warmbuild(
            "build",
            ".",
            "--pool",
            POOL,
            "--cache-key",
            f"state-file-{job}",
            "--build-arg",
            f"REGISTRY={registry}",
            "--result-file",
            str(result_file),
            cwd=app,
            env=no_ci_markers(
                KUBECONFIG=os.environ["WARMBUILD_CI_KUBECONFIG"],
                WARMBUILD_BUILDER="",
                XDG_RUNTIME_DIR=str(runtime),
                CI_JOB_ID=job,
            ),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads(result_file.read_text()))
        assert sorted(p.name for p in app.iterdir()) == ["Dockerfile", "app.py"]  # nothing written here
    first, second = results
    assert (
        first["placement"]["path"] == "warm"
        and second["placement"]["builder_name"] == first["placement"]["builder_name"]
    )
    steps = [s for s in second["steps"] if DOCKERFILE_STEP.match(s["name"])]
    # All cached, the steps are reported in no particular order: each of them, once.
    assert sorted(s["name"].split("] ", 1)[1].split()[0] for s in steps) == ["COPY", "FROM", "RUN"], second["steps"]
    # COPY . and everything after it are what a file written into the context would re-run.
    # (BuildKit reports the FROM of a registry image uncached on every build here: it resolves the
    # reference again; its layers are not pulled again.)
    assert all(s["cached"] for s in steps if not s["name"].split("] ", 1)[1].startswith("FROM")), steps
    # The state file was written where `warmbuild release` of this job finds it, and removed after.
    private = runtime / "warmbuild"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700 and list(private.iterdir()) == []
    release = run_warmbuild(
        "release",
        cwd=app,
        env=no_ci_markers(
            KUBECONFIG=os.environ["WARMBUILD_CI_KUBECONFIG"], XDG_RUNTIME_DIR=str(runtime), CI_JOB_ID=job
        ),
    )
    assert release.returncode == 0
    assert f"nothing to release ({private / f'state-gitlab-{job}.json'} holds no slot)" in release.stderr


def test_a_namespace_that_does_not_exist_is_one_line(tiny_app, registry, run_warmbuild, tmp_path, ci):
    namespace = f"does-not-exist-{uuid.uuid4().hex[:8]}"
    before = ephemeral_pods(ci)
    # The admin identity may list and create anywhere: pods list empty there, then the ephemeral
    # builder's create answers 404 (it used to end in a traceback). The CI identity may not even
    # list there (its Role is the pool's namespace's): a 403, named as the missing permission — the
    # first list is the pool's StatefulSets (membership).
    for kubeconfig, fragment in (
        (os.environ["KUBECONFIG"], f"namespace {namespace} does not exist (or this identity cannot see it)"),
        (os.environ["WARMBUILD_CI_KUBECONFIG"], f"missing permission: list statefulsets.apps in namespace {namespace}"),
    ):
        result_file = tmp_path / f"r-{uuid.uuid4().hex[:6]}.json"
        done = run_warmbuild(
            "build",
            str(tiny_app),
            "--pool",
            POOL,
            "--namespace",
            namespace,
            "--max-wait",
            "0",
            "--build-arg",
            f"REGISTRY={registry}",
            "--result-file",
            str(result_file),
            "--state-file",
            str(tmp_path / "s.json"),
            env=no_ci_markers(KUBECONFIG=kubeconfig, WARMBUILD_BUILDER=""),
        )
        assert done.returncode in (6, 7), done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        (line,) = error_lines(done.stderr)
        assert fragment in line, line
        assert json.loads(result_file.read_text())["exit_code"] == done.returncode
        assert not (tmp_path / "s.json").exists()  # nothing was created, nothing to release
    assert ephemeral_pods(ci) == before
