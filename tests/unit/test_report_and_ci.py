"""BuildResult renderings and the CI adapters (GitHub file commands, GitLab dotenv)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from warmbuild.buildkit.progress import CacheStats, StepResult
from warmbuild.ci import github as github_mod
from warmbuild.ci import publishers_from_env
from warmbuild.ci.github import GitHubPublisher, heredoc_entry
from warmbuild.ci.gitlab import DOTENV_NAMES, GitLabPublisher, dotenv_text
from warmbuild.ci.outputs import output_values
from warmbuild.report import (
    SCHEMA_VERSION,
    BuildResult,
    Placement,
    Timings,
    render_markdown_summary,
    render_table,
    result_to_dict,
    write_result_file,
)

T0 = datetime(2026, 11, 29, 13, 0, 0, tzinfo=timezone.utc)
IMAGE_DIGEST = "sha256:" + "ae" * 32
CONFIG_DIGEST = "sha256:" + "b4" * 32
VERSION = "9.9.9-test"


def step(n: int, name: str, seconds: float, cached: bool = False, error: str | None = None) -> StepResult:
    start = T0 + timedelta(seconds=n)
    return StepResult(n, f"sha256:{n:064x}", name, start, start + timedelta(seconds=seconds), cached, error)


def make_result(**overrides) -> BuildResult:
    values = dict(
        status="success",
        placement=Placement(
            builder="tcp://10.1.2.3:1234", path="warm", builder_name="pool-0", affine=True, reason="cache affinity"
        ),
        timings=Timings(
            queue_seconds=1.25,
            startup_seconds=0.0,
            context_seconds=0.5,
            build_seconds=42.0,
            export_seconds=6.0,
            push_seconds=4.5,
            total_seconds=50.125,
        ),
        cache=CacheStats(cached_steps=3, total_steps=4),
        steps=(
            step(1, "[1/4] FROM python:3.11-slim", 0.0, cached=True),
            step(2, "[2/4] RUN a | b", 30.0),
            step(3, "[3/4] COPY . .", 0.0, cached=True),
            step(4, "[4/4] RUN pip install", 0.0, cached=True),
        ),
        image_digest=IMAGE_DIGEST,
        config_digest=CONFIG_DIGEST,
        image_names=("127.0.0.1:5000/team/app:dev",),
        pushed=True,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=50.125),
        error=None,
        exit_code=0,
        warnings=("FromAsCasing",),
    )
    values.update(overrides)
    return BuildResult(**values)


# --- build-result.json ------------------------------------------------------------------------


def test_result_to_dict_schema_and_keys():
    result = make_result()
    doc = result_to_dict(result, VERSION)
    assert doc["schema_version"] == 1 == SCHEMA_VERSION
    assert set(doc) == {
        "schema_version",
        "warmbuild_version",
        "status",
        "exit_code",
        "error",
        "image",
        "placement",
        "timings",
        "cache",
        "steps",
        "warnings",
        "attempts",
        "attempt_history",
        "registry_retries",
        "started_at",
        "finished_at",
    }
    assert doc["attempts"] == 0 and doc["attempt_history"] == [] and doc["registry_retries"] == 0
    assert doc["warmbuild_version"] == VERSION
    assert doc["status"] == "success" and doc["exit_code"] == 0 and doc["error"] is None
    assert doc["image"] == {
        "digest": IMAGE_DIGEST,
        "config_digest": CONFIG_DIGEST,
        "names": ["127.0.0.1:5000/team/app:dev"],
        "pushed": True,
    }
    assert doc["placement"] == {
        "builder": "tcp://10.1.2.3:1234",
        "builder_name": "pool-0",
        "path": "warm",
        "affine": True,
        "reason": "cache affinity",
    }
    assert set(doc["timings"]) == {
        "queue_seconds",
        "startup_seconds",
        "context_seconds",
        "build_seconds",
        "export_seconds",
        "push_seconds",
        "total_seconds",
    }
    assert doc["timings"]["build_seconds"] == 42.0 and doc["timings"]["total_seconds"] == 50.125
    assert doc["cache"] == {"cached_steps": 3, "total_steps": 4, "ratio": 0.75}
    assert len(doc["steps"]) == 4
    run_step = doc["steps"][1]
    assert run_step == {
        "name": "[2/4] RUN a | b",
        "cached": False,
        "seconds": 30.0,
        "started": (T0 + timedelta(seconds=2)).isoformat(),
        "completed": (T0 + timedelta(seconds=32)).isoformat(),
        "error": None,
    }
    assert doc["warnings"] == ["FromAsCasing"]
    assert datetime.fromisoformat(doc["started_at"]) == T0
    json.dumps(doc)  # serialisable as is


def test_result_to_dict_for_a_failure_without_outcome():
    result = make_result(
        status="failed",
        cache=CacheStats(0, 0),
        steps=(),
        image_digest=None,
        config_digest=None,
        image_names=(),
        pushed=False,
        error="buildctl not found",
        exit_code=4,
        started_at=None,
        finished_at=None,
    )
    doc = result_to_dict(result, VERSION)
    assert doc["status"] == "failed" and doc["exit_code"] == 4 and doc["error"] == "buildctl not found"
    assert doc["cache"]["ratio"] == 0.0
    assert doc["image"]["digest"] is None and doc["image"]["names"] == []
    assert doc["started_at"] is None


def test_cache_ratio_is_rounded_to_four_places():
    doc = result_to_dict(make_result(cache=CacheStats(1, 3)), VERSION)
    assert doc["cache"]["ratio"] == round(1 / 3, 4)


def test_write_result_file_is_valid_json_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out" / "build-result.json"  # parent does not exist yet
    result = make_result()
    write_result_file(result, target, VERSION)
    assert json.loads(target.read_text()) == result_to_dict(result, VERSION)
    assert sorted(p.name for p in target.parent.iterdir()) == ["build-result.json"]
    # overwriting replaces the whole file
    failed = make_result(status="failed", exit_code=1, error="boom")
    write_result_file(failed, target, VERSION)
    assert json.loads(target.read_text())["status"] == "failed"
    assert sorted(p.name for p in target.parent.iterdir()) == ["build-result.json"]


def test_write_result_file_leaves_no_temp_file_when_the_final_rename_fails(tmp_path):
    target = tmp_path / "build-result.json"
    target.mkdir()  # a directory in the way: os.replace cannot put a file there
    with pytest.raises(OSError):
        write_result_file(make_result(), target, VERSION)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build-result.json"]


# --- human renderings -------------------------------------------------------------------------------


def test_render_table_mentions_digest_builder_and_cache_ratio():
    result = make_result()
    text = render_table(result)
    assert text.splitlines()[0].startswith("warmbuild: success")
    assert IMAGE_DIGEST in text
    assert result.placement.builder in text and "(warm)" in text
    ratio = f"{result.cache.cached_steps}/{result.cache.total_steps} steps cached ({result.cache.ratio:.0%})"
    assert ratio in text and "(75%)" in text
    assert "127.0.0.1:5000/team/app:dev (pushed)" in text
    assert "[2/4] RUN a | b" in text  # the slowest uncached step is listed


def test_render_table_of_a_failure_shows_the_error_on_the_first_line():
    text = render_table(make_result(status="failed", error="step failed: exit code: 3", image_digest=None))
    assert text.splitlines()[0] == "warmbuild: failed — step failed: exit code: 3"
    assert "digest" not in text


def test_markdown_summary_mentions_digest_builder_and_cache_ratio():
    result = make_result()
    md = render_markdown_summary(result)
    assert md.startswith("### ") and "success" in md.splitlines()[0]
    assert IMAGE_DIGEST in md
    assert result.placement.builder in md
    assert f"{result.cache.cached_steps}/{result.cache.total_steps} steps cached (75%)" in md


def _table_cells(row: str) -> list[str]:
    """Split a GFM table row on unescaped pipes."""
    assert row.startswith("|") and row.endswith("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", row[1:-1])]


def test_markdown_summary_escapes_pipes_in_step_names():
    md = render_markdown_summary(make_result())
    rows = [line for line in md.splitlines() if "RUN a" in line and line.startswith("|")]
    assert rows, md
    for row in rows:
        assert "a \\| b" in row
        assert len(_table_cells(row)) == 3  # step | cached | time: the pipe did not add a column
    # every row of the steps table keeps three cells
    step_rows = [line for line in md.splitlines() if line.startswith("| [")]
    assert len(step_rows) == 4
    assert all(len(_table_cells(r)) == 3 for r in step_rows)


def test_markdown_error_is_one_quoted_line():
    md = render_markdown_summary(make_result(status="failed", error="line one\nline | two"))
    quoted = [line for line in md.splitlines() if line.startswith("> ")]
    assert quoted == ["> line one line \\| two"]


# --- GitHub Actions ---------------------------------------------------------------------------------


def read_github_file_command(text: str) -> dict[str, str]:
    """GitHub's documented format for GITHUB_OUTPUT/GITHUB_ENV: `name=value` lines, or
    `name<<DELIMITER`, value lines, a line equal to DELIMITER."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            assert name and delimiter, line
            body = []
            while True:
                assert i < len(lines), f"delimiter {delimiter!r} never closed"
                if lines[i] == delimiter:
                    i += 1
                    break
                body.append(lines[i])
                i += 1
            values[name] = "\n".join(body)
        else:
            name, sep, value = line.partition("=")
            assert sep and name, line
            values[name] = value
    return values


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        "two\nlines",
        "before\nEOF\nafter",
        "EOF",
        "trailing newline\n",
        "\nleading newline",
        "name=value\nx<<EOF",
        "ghadelimiter_",
    ],
)
def test_heredoc_entry_round_trips(value):
    assert read_github_file_command(heredoc_entry("out", value)) == {"out": value}


def test_heredoc_delimiter_changes_when_the_value_contains_it(monkeypatch):
    fixed = [uuid.UUID(int=1), uuid.UUID(int=1), uuid.UUID(int=2)]
    monkeypatch.setattr(github_mod.uuid, "uuid4", lambda: fixed.pop(0))
    value = f"x\nghadelimiter_{uuid.UUID(int=1)}\ny"
    entry = heredoc_entry("out", value)
    assert entry.startswith(f"out<<ghadelimiter_{uuid.UUID(int=2)}\n")
    assert read_github_file_command(entry) == {"out": value}


def test_github_publish_writes_every_output_and_the_summary(tmp_path):
    output = tmp_path / "github_output"
    summary = tmp_path / "step_summary"
    output.write_text("earlier=kept\n")  # GitHub appends across steps: keep what is there
    summary.write_text("# earlier step\n")
    result = make_result()
    doc = result_to_dict(result, VERSION)
    publisher = GitHubPublisher.from_env({"GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)})
    publisher.publish(result, doc)

    written = read_github_file_command(output.read_text(encoding="utf-8"))
    expected = output_values(result, doc)
    assert written.pop("earlier") == "kept"
    assert written == expected
    assert written["digest"] == IMAGE_DIGEST
    assert written["imageid"] == CONFIG_DIGEST
    assert json.loads(written["metadata"]) == doc["image"]
    assert written["builder"] == "tcp://10.1.2.3:1234"
    assert written["path"] == "warm"
    assert written["build-seconds"] == "42.000"
    assert written["total-seconds"] == "50.125"
    assert written["cache-hit-ratio"] == "0.7500"

    text = summary.read_text(encoding="utf-8")
    assert text.startswith("# earlier step\n")
    assert render_markdown_summary(result) in text


def test_github_publish_values_with_newlines_and_a_naive_delimiter(tmp_path):
    output = tmp_path / "github_output"
    result = make_result(placement=Placement(builder="tcp://b:1234\nEOF\nmore", path="warm\nspill"))
    doc = result_to_dict(result, VERSION)
    GitHubPublisher(output_file=output, summary_file=None).publish(result, doc)
    written = read_github_file_command(output.read_text(encoding="utf-8"))
    assert written["builder"] == "tcp://b:1234\nEOF\nmore"
    assert written["path"] == "warm\nspill"
    assert written == output_values(result, doc)


def test_github_publish_without_files_does_nothing(tmp_path):
    GitHubPublisher.from_env({}).publish(make_result(), result_to_dict(make_result(), VERSION))
    assert list(tmp_path.iterdir()) == []


# --- GitLab CI ------------------------------------------------------------------------------------------


def test_dotenv_lines_are_single_line_key_values():
    values = {name: f"v-{name}" for name in DOTENV_NAMES}
    values["builder"] = "tcp://b:1234\nsecond line\r\nthird"
    text = dotenv_text(values)
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == len(DOTENV_NAMES)
    parsed = {}
    for line in lines:
        assert re.match(r"^[A-Z][A-Z0-9_]*=[^\r\n]*$", line), line
        key, _, value = line.partition("=")
        parsed[key] = value
    assert set(parsed) == set(DOTENV_NAMES.values())
    assert "\n" not in parsed["BUILDER"] and "second line" in parsed["BUILDER"] and "third" in parsed["BUILDER"]
    assert parsed["IMAGE_DIGEST"] == "v-digest"


def test_gitlab_publish_writes_the_dotenv_report(tmp_path):
    target = tmp_path / "build.env"
    result = make_result()
    doc = result_to_dict(result, VERSION)
    GitLabPublisher.from_env({"WARMBUILD_DOTENV": str(target)}).publish(result, doc)
    parsed = dict(line.split("=", 1) for line in target.read_text(encoding="utf-8").splitlines())
    expected = output_values(result, doc)
    for name, key in DOTENV_NAMES.items():
        assert parsed[key] == expected[name]
    assert parsed["IMAGE_DIGEST"] == IMAGE_DIGEST
    assert parsed["CACHE_HIT_RATIO"] == "0.7500"


# --- choosing publishers ---------------------------------------------------------------------------------


def test_publishers_from_env_github(tmp_path):
    (publisher,) = publishers_from_env({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "o")})
    assert isinstance(publisher, GitHubPublisher)
    assert publisher.output_file == tmp_path / "o"


def test_publishers_from_env_gitlab(tmp_path):
    (publisher,) = publishers_from_env({"GITLAB_CI": "true", "WARMBUILD_DOTENV": str(tmp_path / "b.env")})
    assert isinstance(publisher, GitLabPublisher)
    assert publisher.dotenv_file == tmp_path / "b.env"


@pytest.mark.parametrize("environ", [{}, {"CI": "true"}, {"GITHUB_ACTIONS": "false"}, {"GITLAB_CI": ""}])
def test_publishers_from_env_none(environ):
    assert publishers_from_env(environ) == []
