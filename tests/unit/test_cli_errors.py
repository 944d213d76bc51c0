"""`warmbuild.cli.main` exit codes and messages for errors that need no builder."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

from warmbuild import cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No CI publishers, no builder from the environment, and nothing written outside tmp_path."""
    for name in (
        "WARMBUILD_BUILDER",
        "WARMBUILD_BUILDCTL",
        "WARMBUILD_RESULT_FILE",
        "WARMBUILD_TLS_CA",
        "WARMBUILD_TLS_CERT",
        "WARMBUILD_TLS_KEY",
        "WARMBUILD_TLS_SERVER_NAME",
        "WARMBUILD_DOTENV",
        "GITHUB_ACTIONS",
        "GITHUB_OUTPUT",
        "GITHUB_STEP_SUMMARY",
        "GITLAB_CI",
        "WARMBUILD_POOL",
        "WARMBUILD_CACHE_KEY",
        "WARMBUILD_MAX_WAIT",
        "WARMBUILD_LEASE_SECONDS",
        "WARMBUILD_NAMESPACE",
        "WARMBUILD_STATE_FILE",
        "KUBECONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """main() installs its own SIGINT/SIGTERM/SIGHUP handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "app"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    return ctx


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("warmbuild: error: ")
    return lines[0]


def test_unknown_flag(capsys, context):
    code, out, err = run(capsys, ["build", str(context), "--builder", "tcp://127.0.0.1:1234", "--frobnicate"])
    assert code == 2
    assert out == ""
    line = assert_one_error_line(err)
    assert "--frobnicate" in line


def test_no_command(capsys):
    code, _, err = run(capsys, [])
    assert code == 2
    assert_one_error_line(err)


def test_missing_builder(capsys, context):
    code, out, err = run(capsys, ["build", str(context), "--tag", "app:dev"])
    assert code == 2
    assert out == ""
    line = assert_one_error_line(err)
    assert "--builder" in line


def test_bad_builder_address(capsys, context):
    code, _, err = run(capsys, ["build", str(context), "--builder", "http://127.0.0.1:1234"])
    assert code == 2
    assert "http://127.0.0.1:1234" in assert_one_error_line(err)


def test_bad_tag(capsys, context, tmp_path):
    result_file = tmp_path / "build-result.json"
    code, out, err = run(
        capsys,
        [
            "build",
            str(context),
            "--builder",
            "tcp://127.0.0.1:1234",
            "--tag",
            "Bad Name:1",
            "--result-file",
            str(result_file),
        ],
    )
    assert code == 2
    assert out == ""
    assert "Bad Name:1" in assert_one_error_line(err)
    assert not result_file.exists()  # input errors stop before any build is attempted


def test_missing_buildctl_is_exit_4_and_the_result_file_says_so(capsys, context, tmp_path, monkeypatch):
    # pipeline.run_build looks for buildctl before it tries the builder, so the unreachable
    # builder below is never contacted and the missing tool is what gets reported.
    missing = tmp_path / "no-such-dir" / "buildctl"
    monkeypatch.setenv("WARMBUILD_BUILDCTL", str(missing))
    port = unused_port()
    result_file = tmp_path / "out" / "build-result.json"

    code, out, err = run(
        capsys,
        ["build", str(context), "--builder", f"tcp://127.0.0.1:{port}", "--result-file", str(result_file)],
    )

    assert code == 4
    assert out == ""
    assert f"warmbuild: error: buildctl not found ('{missing}')" in err
    assert err.splitlines()[-1].startswith("warmbuild: error: ")

    document = json.loads(result_file.read_text())
    assert document["status"] == "failed"
    assert document["exit_code"] == 4
    assert "buildctl" in document["error"]
    assert document["placement"]["builder"] == f"tcp://127.0.0.1:{port}"
    assert document["steps"] == []
    assert document["image"]["digest"] is None
    assert sorted(p.name for p in result_file.parent.iterdir()) == ["build-result.json"]


def test_explicit_buildctl_flag_wins_over_the_environment(capsys, context, tmp_path, monkeypatch):
    monkeypatch.setenv("WARMBUILD_BUILDCTL", "/bin/sh")  # exists, but the flag names another
    missing = tmp_path / "missing-buildctl"
    result_file = tmp_path / "r.json"
    code, _, err = run(
        capsys,
        [
            "build",
            str(context),
            "--builder",
            f"tcp://127.0.0.1:{unused_port()}",
            "--buildctl",
            str(missing),
            "--result-file",
            str(result_file),
        ],
    )
    assert code == 4
    assert str(missing) in err
    assert json.loads(result_file.read_text())["exit_code"] == 4


def test_failure_summary_is_printed_to_the_current_stderr(capsys, context, tmp_path, monkeypatch):
    # The summary table belongs on stderr together with the error line. It must follow
    # sys.stderr as it is when the build runs (redirect_stderr, capsys), not as it was at import.
    monkeypatch.setenv("WARMBUILD_BUILDCTL", str(tmp_path / "missing-buildctl"))
    code, out, err = run(
        capsys,
        [
            "build",
            str(context),
            "--builder",
            f"tcp://127.0.0.1:{unused_port()}",
            "--result-file",
            str(tmp_path / "r.json"),
        ],
    )
    assert code == 4
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("warmbuild: failed — buildctl not found")
    assert any(line.strip().startswith("builder ") and "(direct)" in line for line in lines)
    assert lines[-1].startswith("warmbuild: error: buildctl not found")
