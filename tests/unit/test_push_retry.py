"""Registry faults: a push the registry failed (connection, 5xx, an upload collision) is solved again
on the same builder with backoff; a refusal is not; a push that keeps failing is exit 5 and never
reported as pushed; a cache export that failed on the registry's side is retried briefly, then a warning."""

from __future__ import annotations

import io
import json

import pytest

from warmbuild import pipeline
from warmbuild.buildkit import CacheStats, registry_retry_delay
from warmbuild.buildkit.failures import CACHE_EXPORT_RETRY_DELAYS, REGISTRY_RETRY_DELAYS, is_registry_outage
from warmbuild.buildkit.phases import SolvePhases
from warmbuild.buildkit.progress import StepResult
from warmbuild.buildkit.run import SolveOutcome
from warmbuild.config import BuilderEndpoint, build_request
from warmbuild.errors import BuildFailed, RegistryRefused, RegistryUnavailable
from warmbuild.report import Placement

COLLIDED = "failed to push r/app:1: unknown: provided digest did not match uploaded content"
UNAVAILABLE = (
    'failed to push r/app:1: failed commit on ref "manifest-sha256:ab": unexpected status from PUT request to '
    "http://127.0.0.1:5000/v2/app/manifests/1: 503 Service Unavailable"
)
REFUSED_CACHE = "error writing layer blob: dial tcp 127.0.0.1:5000: connect: connection refused"


def outcome(failure=None, steps=()) -> SolveOutcome:
    return SolveOutcome(
        image_digest=None if failure else "sha256:" + "a" * 64,
        config_digest=None,
        image_names=("r/app:1",),
        steps=steps,
        cache=CacheStats(0, 0),
        phases=SolvePhases(0.0, 0.0, 0.0, 0.0),
        seconds=0.1,
        warnings=(),
        failure=failure,
    )


def cache_export_failed(error: str) -> tuple[StepResult, ...]:
    return (StepResult(1, "sha256:c", "exporting cache to registry", None, None, False, error),)


@pytest.fixture
def solves(monkeypatch):
    """The solves run_build asks for, answered in order from the list the test fills; the pauses it takes."""
    answers: list[SolveOutcome] = []
    asked: list[int] = []
    paused: list[float] = []
    monkeypatch.setattr(pipeline, "find_buildctl", lambda _path: "buildctl")
    monkeypatch.setattr(pipeline, "check_reachable", lambda _builder: None)
    monkeypatch.setattr(pipeline, "check_buildkit_answers", lambda _path, _builder: None)
    monkeypatch.setattr(pipeline, "_sleep", paused.append)

    def run_solve(*_args, **_kwargs):
        asked.append(1)
        return answers.pop(0)

    monkeypatch.setattr(pipeline, "run_solve", run_solve)
    return answers, asked, paused


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
    answers, asked, paused = solves
    answers += [outcome(RegistryUnavailable(f"the registry failed the push of r/app:1: {COLLIDED}")), outcome()]
    result = build(tmp_path)
    assert len(asked) == 2 and result.status == "success" and result.pushed and paused == [1.0]
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["registry_retries"] == 1
    assert any("solved again on the same builder" in warning for warning in document["warnings"])


def test_a_registry_outage_is_retried_with_growing_pauses_until_the_push_succeeds(solves, tmp_path):
    answers, asked, paused = solves
    down = RegistryUnavailable(f"the registry failed the push of r/app:1: {UNAVAILABLE}")
    answers += [outcome(down), outcome(down), outcome(down), outcome()]
    result = build(tmp_path)
    assert result.status == "success" and result.pushed and result.registry_retries == 3
    assert paused == [1.0, 2.0, 4.0] and len(asked) == 4


def test_a_push_that_keeps_failing_is_exit_5_and_never_reported_as_pushed(solves, tmp_path):
    answers, asked, paused = solves
    down = RegistryUnavailable(f"the registry failed the push of r/app:1: {UNAVAILABLE}")
    answers += [outcome(down)] * (len(REGISTRY_RETRY_DELAYS) + 1)
    with pytest.raises(RegistryRefused) as raised:
        build(tmp_path)
    assert raised.value.exit_code == 5 and len(asked) == len(REGISTRY_RETRY_DELAYS) + 1
    assert paused == list(REGISTRY_RETRY_DELAYS)
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["image"]["pushed"] is False and document["image"]["digest"] is None
    assert document["exit_code"] == 5 and document["registry_retries"] == len(REGISTRY_RETRY_DELAYS)


def test_a_refusal_is_not_pushed_again(solves, tmp_path):
    answers, asked, paused = solves
    answers += [outcome(RegistryRefused("the registry refused the push of r/app:1: 401 Unauthorized"))]
    with pytest.raises(RegistryRefused):
        build(tmp_path)
    assert len(asked) == 1 and paused == []
    assert json.loads((tmp_path / "r.json").read_text())["image"]["pushed"] is False


def test_a_cache_export_the_registry_failed_is_retried_briefly_then_stays_a_warning(solves, tmp_path):
    answers, asked, paused = solves
    failed_export = cache_export_failed(REFUSED_CACHE)
    answers += [outcome(steps=failed_export)] * (len(CACHE_EXPORT_RETRY_DELAYS) + 1)
    result = build(tmp_path)
    assert result.status == "success" and result.pushed and paused == list(CACHE_EXPORT_RETRY_DELAYS)
    assert result.registry_retries == len(CACHE_EXPORT_RETRY_DELAYS)


def test_a_cache_export_that_works_on_the_retry_ends_the_retries(solves, tmp_path):
    answers, asked, paused = solves
    answers += [outcome(steps=cache_export_failed(REFUSED_CACHE)), outcome()]
    result = build(tmp_path)
    assert result.status == "success" and len(asked) == 2 and result.registry_retries == 1


def test_what_is_a_registry_outage():
    assert is_registry_outage(COLLIDED)
    assert is_registry_outage("… unknown: blob unknown to registry - sha256:39621a4e")
    assert is_registry_outage(UNAVAILABLE)
    assert is_registry_outage("unexpected status: 502 Bad Gateway")
    assert is_registry_outage("unexpected status: 500 Internal Server Error")
    assert is_registry_outage(REFUSED_CACHE)
    assert is_registry_outage('Put "http://127.0.0.1:5000/v2/app/blobs/uploads/x": EOF')
    # Refusals and client errors are not: only the user can fix them.
    assert not is_registry_outage("failed to push r/app:1: 401 Unauthorized")
    assert not is_registry_outage("push access denied, repository does not exist or may require authorization")
    assert not is_registry_outage("unexpected status: 404 Not Found")
    assert not is_registry_outage("sha256:5123abcdef0123")


def test_only_registry_side_failures_have_a_retry_delay():
    unavailable = RegistryUnavailable("the registry failed the push of r/app:1: 503 Service Unavailable")
    assert registry_retry_delay(unavailable, (), 0) == REGISTRY_RETRY_DELAYS[0]
    assert registry_retry_delay(unavailable, (), len(REGISTRY_RETRY_DELAYS)) is None
    assert registry_retry_delay(RegistryRefused("401 Unauthorized"), (), 0) is None
    assert registry_retry_delay(BuildFailed("step 'RUN make' failed: 503 Service Unavailable"), (), 0) is None
    assert registry_retry_delay(None, (), 0) is None
    assert registry_retry_delay(None, ("error writing manifest: 401 Unauthorized",), 0) is None
    assert registry_retry_delay(None, (REFUSED_CACHE,), 0) == CACHE_EXPORT_RETRY_DELAYS[0]
