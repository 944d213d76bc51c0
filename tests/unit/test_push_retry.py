"""A push that collided with itself in the registry is pushed once more; a refusal is not."""

from __future__ import annotations

import io
import json

import pytest

from warmbuild import pipeline
from warmbuild.buildkit import CacheStats, is_transient_push_failure
from warmbuild.buildkit.phases import SolvePhases
from warmbuild.buildkit.run import SolveOutcome
from warmbuild.config import BuilderEndpoint, build_request
from warmbuild.errors import BuildFailed, RegistryRefused
from warmbuild.report import Placement

COLLIDED = "failed to push r/app:1: unknown: provided digest did not match uploaded content"


def outcome(failure=None) -> SolveOutcome:
    return SolveOutcome(
        image_digest=None if failure else "sha256:" + "a" * 64,
        config_digest=None,
        image_names=("r/app:1",),
        steps=(),
        cache=CacheStats(0, 0),
        phases=SolvePhases(0.0, 0.0, 0.0, 0.0),
        seconds=0.1,
        warnings=(),
        failure=failure,
    )


@pytest.fixture
def solves(monkeypatch):
    """The solves run_build asks for, answered in order from the list the test fills."""
    answers: list[SolveOutcome] = []
    asked: list[int] = []
    monkeypatch.setattr(pipeline, "find_buildctl", lambda _path: "buildctl")
    monkeypatch.setattr(pipeline, "check_reachable", lambda _builder: None)
    monkeypatch.setattr(pipeline, "check_buildkit_answers", lambda _path, _builder: None)

    def run_solve(*_args, **_kwargs):
        asked.append(1)
        return answers.pop(0)

    monkeypatch.setattr(pipeline, "run_solve", run_solve)
    return answers, asked


def build(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    request = build_request(
        context=str(tmp_path), tags=["r/app:1"], push=True, result_file=str(tmp_path / "r.json"), environ={}
    )
    return pipeline.run_build(
        request,
        BuilderEndpoint("tcp://127.0.0.1:1"),
        Placement(builder="b", path="direct"),
        log=io.StringIO(),
        environ={},
    )


def test_a_collision_is_pushed_again_and_said(solves, tmp_path):
    answers, asked = solves
    answers += [outcome(RegistryRefused(f"the registry refused the push of r/app:1: {COLLIDED}")), outcome()]
    result = build(tmp_path)
    assert len(asked) == 2 and result.status == "success" and result.pushed
    document = json.loads((tmp_path / "r.json").read_text())
    assert any("pushed again" in warning for warning in document["warnings"])


def test_a_refusal_is_not_pushed_again(solves, tmp_path):
    answers, asked = solves
    answers += [outcome(RegistryRefused("the registry refused the push of r/app:1: 401 Unauthorized"))]
    with pytest.raises(RegistryRefused):
        build(tmp_path)
    assert len(asked) == 1
    assert json.loads((tmp_path / "r.json").read_text())["image"]["pushed"] is False


def test_a_second_collision_fails_the_build(solves, tmp_path):
    answers, asked = solves
    collided = RegistryRefused(f"the registry refused the push of r/app:1: {COLLIDED}")
    answers += [outcome(collided), outcome(collided)]
    with pytest.raises(RegistryRefused):
        build(tmp_path)
    assert len(asked) == 2


def test_only_a_collision_of_concurrent_uploads_is_pushed_again():
    collided = "failed to push r/app:1: errors:\nunknown: provided digest did not match uploaded content"
    assert is_transient_push_failure(RegistryRefused(f"the registry refused the push of r/app:1: {collided}"))
    assert is_transient_push_failure(RegistryRefused("… unknown: blob unknown to registry - sha256:39621a4e"))
    # A real refusal, a failed step, or nothing at all: never pushed again.
    assert not is_transient_push_failure(RegistryRefused("the registry refused the push of r/app:1: 401 Unauthorized"))
    assert not is_transient_push_failure(BuildFailed("step 'RUN make' failed: provided digest did not match"))
    assert not is_transient_push_failure(None)
