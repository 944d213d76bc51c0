"""A pool build that loses its builder before the push runs again elsewhere (pipeline.run_pool_build):
attempts and reasons in the result and the CI summary, every slot given back, the lost builder marked
and avoided, the history given only the build that counts; after the push began, one clear failure."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest

from warmbuild import pipeline
from warmbuild.buildkit import CacheStats
from warmbuild.buildkit.phases import SolvePhases
from warmbuild.buildkit.run import SolveOutcome
from warmbuild.config import PoolFlags, build_request
from warmbuild.errors import BuilderLost, BuildFailed, NoSlotAvailable
from warmbuild.pool.leases import SlotLease
from warmbuild.pool.membership import Builder
from warmbuild.pool.placement import Grant
from warmbuild.report import render_markdown_summary

LOST = "lost the builder during the build: error: failed to solve: Unavailable: error reading from server: EOF"


class Broker:
    """A SlotBroker granting builders b-0, b-1, … in turn (skipping those the request avoids)."""

    def __init__(self, builders=("b-0", "b-1", "b-2"), fail_after: int | None = None):
        self.builders = list(builders)
        self.fail_after = fail_after
        self.asked: list[tuple[str, ...]] = []
        self.released: list[str] = []
        self.marked: list[tuple[str, str]] = []
        self.cleared: list[str] = []
        self.recorded = []

    def acquire(self, request, log):
        self.asked.append(request.avoid)
        if self.fail_after is not None and len(self.asked) > self.fail_after:
            raise NoSlotAvailable("pool 'p' in namespace ns: no slot")
        name = next(b for b in self.builders if b not in request.avoid)
        lease = SlotLease("ns", f"{name}-slot-0", name, "me", 1, "1", 15, datetime.now(timezone.utc))
        builder = Builder(name, "uid-" + name, "tcp://127.0.0.1:1", 2)
        return Grant("warm", lease, builder, True, name, 0.0, f"affine builder {name}", marked=name == "b-1")

    def keep(self, grant, on_lost, log=None):
        return type("Keeper", (), {"stop": lambda self: None})()

    def release(self, grant):
        self.released.append(grant.lease.name)
        return True

    def record(self, request, grant, result):
        self.recorded.append((grant.builder.name, result.status))

    def mark_unhealthy(self, request, grant, reason, log):
        self.marked.append((grant.builder.name, reason))
        return True

    def clear_unhealthy(self, request, grant):
        self.cleared.append(grant.builder.name)


def outcome(failure=None) -> SolveOutcome:
    return SolveOutcome(
        image_digest=None if failure else "sha256:" + "b" * 64,
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
    answers: list = []
    monkeypatch.setattr(pipeline, "find_buildctl", lambda _path: "buildctl")
    monkeypatch.setattr(pipeline, "check_reachable", lambda _builder: None)
    monkeypatch.setattr(pipeline, "check_buildkit_answers", lambda _path, _builder: None)

    def run_solve(*_args, **_kwargs):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(pipeline, "run_solve", run_solve)
    return answers


def pool_build(tmp_path, broker, retries=1, log=None):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    request = build_request(
        context=str(tmp_path), tags=["r/app:1"], push=True, result_file=str(tmp_path / "r.json"), environ={}
    )
    flags = PoolFlags(pool="p", namespace="ns", untrusted=False, state_file=str(tmp_path / "s.json"), retries=retries)
    options = pipeline.plan_pool_build(request, flags, environ={})
    return pipeline.run_pool_build(request, options, broker, log=log or io.StringIO())


def result_file(tmp_path) -> dict:
    return json.loads((tmp_path / "r.json").read_text())


def test_a_lost_builder_is_retried_on_another_with_attempts_in_the_result(solves, tmp_path):
    solves += [outcome(BuilderLost(LOST, cause="connection lost")), outcome()]
    broker = Broker()
    log = io.StringIO()
    result = pool_build(tmp_path, broker, log=log)
    assert result.status == "success" and result.pushed
    assert broker.asked == [(), ("b-0",)]  # the retry avoided the builder it lost
    assert broker.released == ["b-0-slot-0", "b-1-slot-0"]  # the lost attempt's slot went back too
    assert broker.marked == [("b-0", "connection lost")]
    assert broker.recorded == [("b-1", "success")]  # only the build that counts is history
    assert broker.cleared == ["b-1"]  # it carried an old mark: this success is its health check
    document = result_file(tmp_path)
    assert document["attempts"] == 2
    first, second = document["attempt_history"]
    assert first["builder_name"] == "b-0" and first["outcome"] == "lost" and first["cause"] == "connection lost"
    assert first["marked_unhealthy"] is True and LOST in first["reason"]
    assert second["builder_name"] == "b-1" and second["outcome"] == "success" and second["reason"] is None
    assert document["placement"]["builder_name"] == "b-1"
    assert document["placement"]["reason"].startswith("attempt 2, after b-0 was lost (connection lost): ")
    assert "attempt 1 lost its builder b-0 (connection lost) before anything was pushed" in log.getvalue()
    assert not (tmp_path / "s.json").exists()  # nothing left for `warmbuild release`


def test_the_ci_summary_lists_each_attempt_and_its_reason(solves, tmp_path):
    solves += [outcome(BuilderLost(LOST, cause="connection lost")), outcome()]
    summary = render_markdown_summary(pool_build(tmp_path, Broker()))
    assert "**Attempts**" in summary
    assert "| 1 | `b-0` | warm | lost (marked unhealthy) |" in summary
    assert "| 2 | `b-1` | warm | success |" in summary


def test_after_the_push_began_a_lost_builder_is_one_clear_failure_not_a_second_push(solves, tmp_path):
    after_push = BuilderLost(
        LOST + " — after the image push had started, so it is not retried", "connection lost", True
    )
    solves += [outcome(after_push)]
    broker = Broker()
    with pytest.raises(BuilderLost) as raised:
        pool_build(tmp_path, broker)
    assert raised.value.exit_code == 3 and broker.asked == [()] and broker.released == ["b-0-slot-0"]
    assert broker.recorded == []  # a dead builder's attempt is not a build of this workload
    document = result_file(tmp_path)
    assert document["exit_code"] == 3 and document["image"]["pushed"] is False and document["image"]["digest"] is None
    assert document["attempts"] == 1 and document["attempt_history"][0]["outcome"] == "lost"


def test_retries_run_out(solves, tmp_path):
    solves += [outcome(BuilderLost(LOST, cause="connection lost"))] * 3
    broker = Broker()
    with pytest.raises(BuilderLost):
        pool_build(tmp_path, broker, retries=2)
    assert broker.asked == [(), ("b-0",), ("b-0", "b-1")] and len(broker.released) == 3
    assert [a["outcome"] for a in result_file(tmp_path)["attempt_history"]] == ["lost", "lost", "lost"]


def test_no_retries_with_retries_0(solves, tmp_path):
    solves += [outcome(BuilderLost(LOST, cause="connection lost"))]
    broker = Broker()
    with pytest.raises(BuilderLost):
        pool_build(tmp_path, broker, retries=0)
    assert broker.asked == [()]


def test_an_unreachable_builder_before_the_solve_is_retried_too(solves, tmp_path, monkeypatch):
    checks = [BuilderLost("builder tcp://127.0.0.1:1 is unreachable (Connection refused)", cause="unreachable")]

    def check_reachable(_builder):
        if checks:
            raise checks.pop(0)

    monkeypatch.setattr(pipeline, "check_reachable", check_reachable)
    solves += [outcome()]
    broker = Broker()
    assert pool_build(tmp_path, broker).status == "success"
    assert broker.marked == [("b-0", "unreachable")]
    assert result_file(tmp_path)["attempt_history"][0]["cause"] == "unreachable"


def test_a_build_failure_is_never_retried(solves, tmp_path):
    solves += [outcome(BuildFailed("step 'RUN exit 1' failed: exit code: 1"))]
    broker = Broker()
    with pytest.raises(BuildFailed):
        pool_build(tmp_path, broker)
    assert broker.asked == [()] and broker.marked == [] and broker.recorded == [("b-0", "failed")]


def test_a_retry_that_finds_no_slot_reports_every_attempt(solves, tmp_path):
    solves += [outcome(BuilderLost(LOST, cause="connection lost"))]
    broker = Broker(fail_after=1)
    with pytest.raises(NoSlotAvailable):
        pool_build(tmp_path, broker)
    document = result_file(tmp_path)
    assert document["exit_code"] == 7 and document["placement"]["path"] == "none"
    assert [(a["number"], a["path"], a["outcome"]) for a in document["attempt_history"]] == [
        (1, "warm", "lost"),
        (2, "none", "failed"),
    ]
    assert broker.released == ["b-0-slot-0"]


def test_a_direct_build_has_one_attempt(solves, tmp_path):
    from warmbuild.config import BuilderEndpoint
    from warmbuild.report import Placement

    solves += [outcome()]
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    request = build_request(context=str(tmp_path), tags=["r/app:1"], result_file=str(tmp_path / "r.json"), environ={})
    pipeline.run_build(
        request, BuilderEndpoint("tcp://127.0.0.1:1"), Placement("b", "direct"), log=io.StringIO(), environ={}
    )
    document = result_file(tmp_path)
    assert document["attempts"] == 1 and document["attempt_history"][0]["path"] == "direct"


@pytest.mark.parametrize("value", ["9", "-1", "two"])
def test_a_bad_retries_value_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, value):
    from warmbuild import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    code = cli.main(["build", ".", "--pool", "p", "--retries", value, "--result-file", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) <= 2 and "retries" in err[-1] and "Traceback" not in "".join(err)
