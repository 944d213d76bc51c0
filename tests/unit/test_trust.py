"""Which changes are untrusted, from the CI platform's own payloads and variables; what an
untrusted build may not do (name a builder, write a cache)."""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from warmbuild import cli, pipeline
from warmbuild.cache import exports_allowed
from warmbuild.config import CacheSpec, Compression, PoolFlags, build_request
from warmbuild.errors import InputError
from warmbuild.pool.leases import SlotLease
from warmbuild.pool.membership import Builder
from warmbuild.pool.placement import Grant
from warmbuild.trust import Trust, change_trust, check_direct_builder, decide_trust

EVENTS = Path(__file__).resolve().parent.parent / "fixtures" / "github-events"


def github(event: str, fixture: str | None, tmp_path: Path | None = None, **extra: str) -> dict[str, str]:
    env = {"GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": event, "GITHUB_REPOSITORY": "acme/app", **extra}
    if fixture is not None:
        env["GITHUB_EVENT_PATH"] = str(EVENTS / f"{fixture}.json")
    return env


@pytest.mark.parametrize(
    "event, fixture, untrusted, fragment",
    [
        ("pull_request", "pull_request.fork", True, "from mallory/app, not acme/app"),
        ("pull_request", "pull_request.same-repo", False, "from acme/app itself"),
        ("pull_request", "pull_request.deleted-fork", True, "cannot tell"),
        ("pull_request_target", "pull_request_target.fork", True, "from mallory/app"),
        ("pull_request_review", "pull_request_review.fork", True, "from mallory/app"),
        ("pull_request_review_comment", "pull_request_review_comment.fork", True, "from mallory/app"),
        ("issue_comment", "issue_comment.pull-request", True, "pull request #7"),
        ("issue_comment", "issue_comment.issue", False, "on an issue"),
        ("workflow_run", "workflow_run.fork", True, "from mallory/app, not acme/app"),
        ("workflow_run", "workflow_run.push", False, "from acme/app itself"),
        ("merge_group", "merge_group", False, "merge_group event"),
    ],
)
def test_github_events_are_judged_by_where_their_head_comes_from(event, fixture, untrusted, fragment):
    trust = change_trust(github(event, fixture))
    assert trust.untrusted is untrusted
    assert fragment in trust.reason


@pytest.mark.parametrize(
    "event", ["pull_request", "pull_request_target", "pull_request_review", "issue_comment", "workflow_run"]
)
def test_a_pull_request_like_event_without_a_readable_payload_is_untrusted(event, tmp_path):
    missing = change_trust(github(event, None))
    gone = change_trust({**github(event, None), "GITHUB_EVENT_PATH": str(tmp_path / "gone.json")})
    (tmp_path / "broken.json").write_text('{"pull_request": {"head": ')
    broken = change_trust({**github(event, None), "GITHUB_EVENT_PATH": str(tmp_path / "broken.json")})
    (tmp_path / "list.json").write_text("[]")
    not_a_payload = change_trust({**github(event, None), "GITHUB_EVENT_PATH": str(tmp_path / "list.json")})
    for trust in (missing, gone, broken, not_a_payload):
        assert trust.untrusted and "cannot tell" in trust.reason


def test_a_payload_of_another_event_shape_cannot_vouch_for_a_pull_request(tmp_path):
    # A pull_request event whose file holds a push payload: no head or base to compare.
    (tmp_path / "push.json").write_text(json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}}))
    env = {**github("pull_request", None), "GITHUB_EVENT_PATH": str(tmp_path / "push.json")}
    assert change_trust(env).untrusted
    # A workflow_run without head_repository, and one whose head is a fork of the same name.
    payload = json.loads((EVENTS / "workflow_run.push.json").read_text())
    del payload["workflow_run"]["head_repository"]
    (tmp_path / "run.json").write_text(json.dumps(payload))
    assert change_trust({**github("workflow_run", None), "GITHUB_EVENT_PATH": str(tmp_path / "run.json")}).untrusted
    payload = json.loads((EVENTS / "workflow_run.push.json").read_text())
    payload["workflow_run"]["head_repository"]["fork"] = True
    (tmp_path / "run.json").write_text(json.dumps(payload))
    assert change_trust({**github("workflow_run", None), "GITHUB_EVENT_PATH": str(tmp_path / "run.json")}).untrusted


@pytest.mark.parametrize("event", ["push", "schedule", "workflow_dispatch", "release", "merge_group"])
def test_events_that_carry_no_outside_change_are_trusted_even_without_a_payload(event):
    assert not change_trust(github(event, None)).untrusted


@pytest.mark.parametrize(
    "variables, untrusted, fragment",
    [
        ({"CI_PIPELINE_SOURCE": "push"}, False, "push pipeline"),
        (
            {
                "CI_PIPELINE_SOURCE": "merge_request_event",
                "CI_MERGE_REQUEST_IID": "4",
                "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": "900",
                "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH": "mallory/app",
                "CI_MERGE_REQUEST_PROJECT_ID": "100",
            },
            True,
            "merge request from fork mallory/app",
        ),
        (
            {
                "CI_PIPELINE_SOURCE": "merge_request_event",
                "CI_MERGE_REQUEST_IID": "5",
                "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": "100",
                "CI_MERGE_REQUEST_PROJECT_ID": "100",
            },
            False,
            "same project",
        ),
        ({"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "6"}, True, "without"),
        ({"CI_PIPELINE_SOURCE": "merge_request_event"}, True, "without"),
        ({"CI_MERGE_REQUEST_IID": "6", "CI_MERGE_REQUEST_PROJECT_ID": "100"}, True, "without"),
        (
            {
                "CI_PIPELINE_SOURCE": "external_pull_request_event",
                "CI_EXTERNAL_PULL_REQUEST_SOURCE_REPOSITORY": "mallory/app",
                "CI_EXTERNAL_PULL_REQUEST_TARGET_REPOSITORY": "acme/app",
            },
            True,
            "from mallory/app",
        ),
        ({"CI_PIPELINE_SOURCE": "external_pull_request_event"}, True, "without"),
    ],
)
def test_gitlab_merge_requests_from_forks_or_without_their_project_ids_are_untrusted(variables, untrusted, fragment):
    trust = change_trust({"GITLAB_CI": "true", "CI_PROJECT_ID": "100", **variables})
    assert trust.untrusted is untrusted
    assert fragment in trust.reason


def test_jenkins_change_requests_from_forks_are_untrusted_and_a_plain_shell_is_trusted():
    assert change_trust({"BUILD_TAG": "jenkins-app-12", "CHANGE_ID": "7", "CHANGE_FORK": "mallory/app"}).untrusted
    assert not change_trust({"BUILD_TAG": "jenkins-app-12", "CHANGE_ID": "8"}).untrusted
    assert not change_trust({}).untrusted


def test_the_flags_override_the_event_either_way():
    fork = github("pull_request", "pull_request.fork")
    assert decide_trust(False, fork) == Trust(False, "--trusted")
    assert decide_trust(True, {}) == Trust(True, "--untrusted")
    assert decide_trust(None, fork).untrusted


def test_an_untrusted_build_may_not_name_a_builder():
    check_direct_builder(Trust(False, "push event"), "--builder")  # trusted: allowed
    with pytest.raises(InputError) as refused:
        check_direct_builder(Trust(True, "pull_request event from mallory/app, not acme/app"), "WARMBUILD_BUILDER")
    message = refused.value.message
    assert refused.value.exit_code == 2 and "\n" not in message
    assert "untrusted (pull_request event from mallory/app" in message
    assert "WARMBUILD_BUILDER is refused: a direct builder is shared and warm" in message


def test_an_untrusted_build_keeps_none_of_the_users_cache_exports():
    exports = (
        CacheSpec.registry_export("127.0.0.1:5000/acme/app:buildcache", Compression()),
        CacheSpec(type="local", attributes=(("dest", "/tmp/cache"),)),
    )
    assert exports_allowed(exports, untrusted=True) == ((), exports)
    assert exports_allowed(exports, untrusted=False) == (exports, ())
    assert exports_allowed((), untrusted=True) == ((), ())


# --- the CLI and the pipeline apply it ---------------------------------------------------------


@pytest.fixture
def no_ci(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("GITHUB_", "CI_", "WARMBUILD_", "RUNNER_")) or name in ("GITLAB_CI", "CHANGE_FORK"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    return tmp_path


@pytest.mark.parametrize(
    "argv, env, source",
    [
        (["--builder", "tcp://127.0.0.1:1234", "--untrusted"], {}, "--builder"),
        ([], {"WARMBUILD_BUILDER": "tcp://127.0.0.1:1234", "GITHUB_EVENT_NAME": "pull_request"}, "WARMBUILD_BUILDER"),
        (
            ["--builder", "tcp://127.0.0.1:1234"],
            {"GITHUB_EVENT_NAME": "pull_request_target", "GITHUB_EVENT_PATH": str(EVENTS / "pull_request.fork.json")},
            "--builder",
        ),
    ],
)
def test_the_cli_refuses_a_direct_builder_for_an_untrusted_build(no_ci, monkeypatch, capsys, argv, env, source):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result_file = no_ci / "r.json"
    code = cli.main(["build", ".", "--result-file", str(result_file), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("warmbuild: error: this build is untrusted (")
    assert f"{source} is refused: a direct builder is shared and warm" in line
    assert not result_file.exists()  # refused before any builder was contacted


def test_trusted_overrides_the_event_for_a_direct_builder(no_ci, monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_EVENT_NAME", "pull_request")  # no payload: untrusted unless --trusted
    monkeypatch.setenv("WARMBUILD_BUILDCTL", str(no_ci / "no-buildctl"))
    code = cli.main(["build", ".", "--builder", "tcp://127.0.0.1:1", "--trusted", "--result-file", "r.json"])
    assert code == 4, capsys.readouterr().err  # past the trust check: buildctl is what is missing


class RecordingBroker:
    """A SlotBroker that grants one warm slot and records what it was asked."""

    def __init__(self):
        self.released = []

    def acquire(self, request, log):
        self.placement = request
        lease = SlotLease("ns", "b-0-slot-0", "b-0", "me", 1, "1", 15, datetime.now(timezone.utc))
        return Grant("warm", lease, Builder("b-0", "uid", "tcp://127.0.0.1:1", 2), True, "b-0", 0.0, "affine")

    def keep(self, grant, on_lost, log=None):
        return type("Keeper", (), {"stop": lambda self: None})()

    def release(self, grant):
        self.released.append(grant.lease.name)
        return True

    def record(self, request, grant, result):
        pass


@pytest.mark.parametrize("untrusted", [True, False])
def test_an_untrusted_pool_build_drops_the_users_cache_to_and_says_so(no_ci, monkeypatch, untrusted):
    request = build_request(
        context=str(no_ci),
        tags=["127.0.0.1:5000/acme/app:pr"],
        cache_to=["type=registry,ref=127.0.0.1:5000/acme/app:shared,mode=max", "type=local,dest=/tmp/c"],
        cache_from=["127.0.0.1:5000/acme/app:shared"],
        environ={},
    )
    flags = PoolFlags(pool="p", namespace="ns", untrusted=untrusted, state_file=str(no_ci / "s.json"))
    options = pipeline.plan_pool_build(request, flags, environ={})
    seen = {}

    def fake_run_build(request, builder, placement, **kwargs):
        seen.update(request=request, warnings=kwargs["warnings"])

    monkeypatch.setattr(pipeline, "run_build", fake_run_build)
    log = io.StringIO()
    broker = RecordingBroker()
    pipeline.run_pool_build(request, options, broker, log=log)
    assert broker.placement.untrusted is untrusted and broker.released == ["b-0-slot-0"]
    built = seen["request"]
    assert built.cache_imports[:1] == request.cache_imports  # importing is always allowed
    if untrusted:
        assert built.cache_exports == ()
        assert seen["warnings"] == ("--cache-to dropped (2 export(s)): an untrusted build never writes a cache",)
        assert "warmbuild: untrusted build (--untrusted)" in log.getvalue()
        assert "warmbuild: warning: --cache-to dropped (2 export(s))" in log.getvalue()
    else:
        assert built.cache_exports[:2] == request.cache_exports and seen["warnings"] == ()
        assert "dropped" not in log.getvalue()
