"""Where the state file for `warmbuild release` lives: never in the working directory (the build
context), private to the user, one per CI job, found again by a later step of the same job."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from warmbuild import cli
from warmbuild.errors import InputError
from warmbuild.pool.state import ReleaseState, job_key, read_state, state_file_path, write_state

GITHUB_JOB = {"GITHUB_RUN_ID": "4242", "GITHUB_RUN_ATTEMPT": "1", "GITHUB_JOB": "image"}


def test_github_default_is_under_runner_temp_and_one_per_job(tmp_path):
    (tmp_path / "_temp").mkdir()
    env = {"RUNNER_TEMP": str(tmp_path / "_temp"), **GITHUB_JOB, "GITHUB_ACTION": "__run"}
    path = state_file_path(None, env)
    assert path == tmp_path / "_temp" / "warmbuild" / "state-github-4242-1-image.json"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # The release runs in a later step (another GITHUB_ACTION) of the same job: the same file.
    assert state_file_path(None, {**env, "GITHUB_ACTION": "__run_2"}) == path
    # Another job of the run, a re-run, another run: other files.
    assert state_file_path(None, {**env, "GITHUB_JOB": "docs"}) != path
    assert state_file_path(None, {**env, "GITHUB_RUN_ATTEMPT": "2"}) != path
    assert state_file_path(None, {**env, "GITHUB_RUN_ID": "4243"}) != path


def test_a_runner_temp_that_is_not_there_is_passed_over(tmp_path):
    # Older runners hand a container action the host's RUNNER_TEMP without mounting it.
    env = {"RUNNER_TEMP": str(tmp_path / "host-only"), "XDG_RUNTIME_DIR": str(tmp_path), **GITHUB_JOB}
    assert state_file_path(None, env).parent == tmp_path / "warmbuild"
    assert not (tmp_path / "host-only").exists()


def test_gitlab_and_jenkins_are_keyed_by_their_job_and_never_use_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "context").mkdir()
    monkeypatch.chdir(tmp_path / "context")  # the build context, as with `context: .`
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    gitlab = state_file_path(None, {"CI_JOB_ID": "81"})
    assert gitlab == tmp_path / "tmp" / f"warmbuild-{os.getuid()}" / "state-gitlab-81.json"
    assert state_file_path(None, {"CI_JOB_ID": "82"}) != gitlab
    for made in ("ws@tmp", "run"):
        (tmp_path / made).mkdir()
    jenkins = state_file_path(None, {"BUILD_TAG": "jenkins-team/app-12", "WORKSPACE_TMP": str(tmp_path / "ws@tmp")})
    assert jenkins == tmp_path / "ws@tmp" / "warmbuild" / "state-jenkins-jenkins-team_app-12.json"
    runtime = state_file_path(None, {"XDG_RUNTIME_DIR": str(tmp_path / "run")})
    assert runtime.parent == tmp_path / "run" / "warmbuild" and runtime.name == f"state-session-{os.getsid(0)}.json"
    for path in (gitlab, jenkins, runtime):
        assert Path.cwd() not in path.parents
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_explicit_flag_and_environment_win(tmp_path):
    env = {"RUNNER_TEMP": str(tmp_path), **GITHUB_JOB, "WARMBUILD_STATE_FILE": str(tmp_path / "env.json")}
    assert state_file_path(str(tmp_path / "flag.json"), env) == tmp_path / "flag.json"
    assert state_file_path(None, env) == tmp_path / "env.json"
    assert not (tmp_path / "warmbuild").exists()  # no private directory made when it is not used


def test_job_key_is_a_safe_file_name():
    key = job_key({"BUILD_TAG": "jenkins-a/../b c", "EXECUTOR_NUMBER": "3"})
    assert key == "jenkins-jenkins-a_.._b_c-3" and "/" not in key


def test_a_state_directory_that_is_not_ours_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "_temp").mkdir()
    (tmp_path / "_temp" / "warmbuild").symlink_to(elsewhere)  # planted by someone sharing the directory
    with pytest.raises(InputError, match="is not a directory of this user: remove it, or set --state-file"):
        state_file_path(None, {"RUNNER_TEMP": str(tmp_path / "_temp"), **GITHUB_JOB})


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory another user owns")
def test_a_state_directory_of_another_user_is_refused(tmp_path):
    planted = tmp_path / "_temp" / "warmbuild"
    planted.mkdir(parents=True)
    os.chown(planted, 65534, 65534)
    with pytest.raises(InputError, match="not a directory of this user"):
        state_file_path(None, {"RUNNER_TEMP": str(tmp_path / "_temp"), **GITHUB_JOB})


def test_an_open_state_directory_of_ours_is_closed(tmp_path):
    (tmp_path / "warmbuild").mkdir(mode=0o777)
    os.chmod(tmp_path / "warmbuild", 0o777)
    path = state_file_path(None, {"XDG_RUNTIME_DIR": str(tmp_path)})
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_release_in_a_later_step_finds_what_the_build_wrote(tmp_path, monkeypatch, capsys):
    for name in list(os.environ):
        if name.startswith(("GITHUB_", "CI_", "WARMBUILD_", "RUNNER_")) or name in ("BUILD_TAG", "KUBECONFIG"):
            monkeypatch.delenv(name)
    (tmp_path / "_temp").mkdir()
    for name, value in {"RUNNER_TEMP": str(tmp_path / "_temp"), **GITHUB_JOB, "GITHUB_ACTION": "__run"}.items():
        monkeypatch.setenv(name, value)
    path = state_file_path()
    write_state(path, ReleaseState(namespace="ns", lease="", holder=""))  # a build that holds nothing now
    assert read_state(path) == ReleaseState(namespace="ns", lease="", holder="")
    monkeypatch.setenv("GITHUB_ACTION", "__run_2")
    assert cli.main(["release"]) == 0
    assert f"nothing to release ({path} holds no slot)" in capsys.readouterr().err
