"""warmbuild doctor: parser wrapper, shell words, pip → uv, .dockerignore savings, CLI exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warmbuild import cli
from warmbuild.doctor.analysis import RunInfo, walk
from warmbuild.doctor.context import context_savings, ignore_patterns, is_ignored
from warmbuild.doctor.diagnosis import uv_dockerfile_for_build
from warmbuild.doctor.parse import parse_dockerfile
from warmbuild.doctor.rewrite import fix_dockerfile, rewrite_pip_to_uv
from warmbuild.doctor.rules import find_issues
from warmbuild.doctor.shell import run_words, split_commands
from warmbuild.errors import InputError


def _runs(text: str) -> list[RunInfo]:
    return [i for i in walk(parse_dockerfile(text)) if isinstance(i, RunInfo)]


def _rules(text: str, **kwargs) -> list[tuple[str, int | None, bool]]:
    return [(f.rule, f.line, f.fixable) for f in find_issues(parse_dockerfile(text), **kwargs)]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "cannot be parsed"),
        ("FROM x\nRUN <<EOT\npip install torch\n", "cannot be parsed"),
        ("FROM x\nFOO bar\n", "unknown instruction 'FOO'"),
        ("RUN echo hi\n", "starts with FROM"),
    ],
)
def test_unparsable_files_are_input_errors_with_one_line(text, says):
    with pytest.raises(InputError) as caught:
        parse_dockerfile(text, "Dockerfile")
    assert says in caught.value.message and "\n" not in caught.value.message


def test_words_keep_their_offsets_across_continuations_and_comment_lines():
    text = 'FROM x\nRUN FOO=1 pip install \\\n    # a comment\n    "torch==2.3.1" $(cat extra) 2>&1 | tee log\n'
    doc = parse_dockerfile(text)
    words = run_words(doc, doc.instructions[1])
    assert [w.text for w in words] == [
        "FOO=1",
        "pip",
        "install",
        "torch==2.3.1",
        "$(cat extra)",
        "2>&1",
        "|",
        "tee",
        "log",
    ]
    assert [text[w.start : w.end] for w in words][3] == '"torch==2.3.1"'
    commands = split_commands(words)
    assert [c.program for c in commands] == ["pip", "tee"]
    assert [a.text for a in commands[0].assignments] == ["FOO=1"]


# ---------------------------------------------------------------- pip → uv


@pytest.mark.parametrize(
    "command, interpreter",
    [
        ("pip install numpy", '"$(command -v python3)"'),
        ("pip3.11 install numpy", '"$(command -v python3.11)"'),
        ("python -m pip install numpy", '"$(command -v python)"'),
        ("/opt/venv/bin/pip install numpy", "/opt/venv/bin/python3"),
        ("/opt/conda/bin/python3 -m pip install numpy", "/opt/conda/bin/python3"),
    ],
)
def test_uv_installs_into_the_interpreter_pip_would_use(command, interpreter):
    (run,) = _runs(f"FROM x\nRUN {command}\n")
    assert run.pip[0].interpreter == interpreter
    assert f"--python {interpreter} " in rewrite_pip_to_uv(f"FROM x\nRUN {command}\n")


def test_options_uv_does_not_need_are_dropped_and_the_rest_kept_in_place():
    text = (
        "FROM x\n"
        "RUN pip install --no-cache-dir \\\n"
        "      --progress-bar off --root-user-action=ignore \\\n"
        "      -r requirements.txt -c constraints.txt --extra-index-url https://packages.example/simple\n"
    )
    out = rewrite_pip_to_uv(text).split("uv==0.13.9\n", 1)[1]  # the RUN after uv's own install
    assert "--no-cache-dir" not in out and "--progress-bar" not in out and "--root-user-action" not in out
    assert out.endswith("-r requirements.txt -c constraints.txt --extra-index-url https://packages.example/simple\n")
    assert "--index-strategy unsafe-best-match" in out  # pip's choice across indexes, not uv's first-index
    assert "RUN --mount=type=cache,target=/root/.cache/uv /opt/uv/bin/uv pip install" in out


@pytest.mark.parametrize(
    "line, reason",
    [
        ("RUN pip install --user torch", "--user"),
        ("RUN pip install --prefer-binary torch", "--prefer-binary"),
        ("RUN pip install $PIP_FLAGS torch", "expands at build time"),
        ("RUN PIP_INDEX_URL=https://packages.example/simple pip install torch", "PIP_INDEX_URL"),
        ("RUN python3 -m venv /v && /v/bin/pip install torch", "created earlier in the same RUN"),
        ('RUN ["pip", "install", "torch"]', "JSON"),
        ("USER app\nRUN pip install torch", "USER app"),
    ],
)
def test_pip_commands_the_rewrite_leaves_alone_say_why(line, reason):
    text = f"FROM python:3.11\n{line}\n"
    (finding,) = [f for f in find_issues(parse_dockerfile(text)) if f.rule.startswith("pip-")]
    assert not finding.fixable and reason in finding.fix
    assert rewrite_pip_to_uv(text) == text


def test_uv_is_installed_once_per_stage_before_the_copies_that_feed_the_install():
    text = (
        "FROM python:3.11 AS a\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\nRUN pip install gunicorn\n"
        "FROM a\nRUN pip install rich\n"
        "FROM python:3.11\nRUN pip install torch\n"
    )
    out = rewrite_pip_to_uv(text).splitlines()
    boot = [i for i, line in enumerate(out) if "--target /opt/uv uv==" in line]
    assert len(boot) == 2  # stage a (inherited by `FROM a`) and the last stage
    assert out[boot[0] + 1] == "COPY requirements.txt ."


def test_installing_uv_itself_and_local_wheels_are_not_findings():
    text = "FROM python:3.11\nRUN pip install uv==0.13.9\nRUN pip install --no-index --find-links /wheels /wheels/*\n"
    assert _rules(text) == []


def test_no_cache_dir_with_a_pip_cache_mount_is_called_out():
    text = "FROM python:3.11\nRUN --mount=type=cache,target=/root/.cache/pip pip install --no-cache-dir torch\n"
    assert _rules(text) == [("pip-cache-mount-defeated", 2, True)]


# ---------------------------------------------------------------- apt and ordering


def test_apt_mounts_are_added_and_the_list_cleanup_dropped():
    text = 'FROM debian\nRUN apt-get update && \\\n    apt-get install -y git && \\\n    rm -rf /var/lib/apt/lists/*\nCMD ["bash"]\n'
    out = fix_dockerfile(text)
    assert out == (
        "FROM debian\nRUN --mount=type=cache,target=/var/cache/apt,sharing=locked "
        '--mount=type=cache,target=/var/lib/apt,sharing=locked apt-get update && \\\n    apt-get install -y git\nCMD ["bash"]\n'
    )
    assert _rules(out) == []


def test_copy_all_is_moved_only_when_the_requirement_files_stand_alone():
    text = "FROM python:3.11\nWORKDIR /app\nCOPY . .\nRUN pip install -r requirements.txt\n"
    alone = {"requirements.txt": "torch==2.3.1\n"}
    includes = {"requirements.txt": "-r base.txt\n"}
    assert ("copy-all-before-install", 3, True) in _rules(text, requirement_texts=alone)
    assert ("copy-all-before-install", 3, False) in _rules(text, requirement_texts=includes)
    assert ("copy-all-before-install", 3, False) in _rules(text)  # file not seen: not moved
    assert "COPY requirements.txt ./\n" in fix_dockerfile(text, alone)
    assert fix_dockerfile(text, includes).endswith(
        "COPY . .\nRUN --mount=type=cache,target=/root/.cache/uv "
        '/opt/uv/bin/uv pip install --python "$(command -v python3)" '
        "--compile-bytecode --system-certs --link-mode=copy -r requirements.txt\n"
    )


# ---------------------------------------------------------------- .dockerignore


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


@pytest.fixture
def heavy_context(tmp_path) -> Path:
    context = tmp_path / "ctx"
    _write(context / ".git" / "objects" / "pack" / "p.pack", 1000)
    _write(context / "data" / "train.csv", 2000)
    _write(context / "model.safetensors", 300)
    _write(context / "src" / "__pycache__" / "m.cpython-311.pyc", 40)
    _write(context / ".venv" / "lib" / "site.py", 50)
    _write(context / "web" / "node_modules" / "a" / "b.js", 60)
    _write(context / "checkpoints" / "step-10.ckpt", 700)
    _write(context / "models" / "needed.pt", 5000)  # COPY'd by the Dockerfile: never suggested
    _write(context / "app.py", 10)
    (context / "Dockerfile").write_text("FROM python:3.11\nCOPY models/ /models/\nCOPY . /app\n")
    return context


def test_savings_are_the_bytes_of_heavy_files_in_the_real_context(heavy_context):
    items = walk(parse_dockerfile((heavy_context / "Dockerfile").read_text()))
    report = context_savings(heavy_context, heavy_context / "Dockerfile", items)
    assert not report.exists and report.path == heavy_context / ".dockerignore"
    assert {s.pattern: s.bytes for s in report.savings} == {
        ".git": 1000,
        "data": 2000,
        "**/*.safetensors": 300,
        "**/__pycache__": 40,
        "**/.venv": 50,
        "**/node_modules": 60,
        "checkpoints": 700,
    }
    assert report.total_bytes == 4150
    (finding,) = find_issues(parse_dockerfile((heavy_context / "Dockerfile").read_text()), ignore=report)
    assert finding.rule == "dockerignore-missing" and finding.line is None and "4150 bytes" in finding.why


def test_a_weak_dockerignore_is_measured_by_what_it_still_lets_in(heavy_context):
    (heavy_context / ".dockerignore").write_text("# ours\n.git\n/data/\n**/*.ckpt\n")
    items = walk(parse_dockerfile((heavy_context / "Dockerfile").read_text()))
    report = context_savings(heavy_context, heavy_context / "Dockerfile", items)
    assert report.exists and report.total_bytes == 300 + 40 + 50 + 60
    (heavy_context / "Dockerfile.dockerignore").write_text("*\n!app.py\n")  # BuildKit prefers this one
    report = context_savings(heavy_context, heavy_context / "Dockerfile", items)
    assert report.path.name == "Dockerfile.dockerignore" and report.total_bytes == 0


@pytest.mark.parametrize(
    "patterns, path, ignored",
    [
        ("**/*.pt", "a/b/c.pt", True),
        ("**/*.pt", "c.pt", True),
        ("data", "data/x/y.csv", True),
        ("data\n!data/keep.csv", "data/keep.csv", False),
        ("*.bin", "sub/w.bin", False),
        ("sub/[a-c]*.bin", "sub/b1.bin", True),
        ("./checkpoints/", "checkpoints/s.ckpt", True),
    ],
)
def test_dockerignore_patterns_match_as_buildkit_matches(patterns, path, ignored):
    assert is_ignored(path, ignore_patterns(patterns)) is ignored


# ---------------------------------------------------------------- CLI


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "requirements.txt").write_text("numpy==2.2.1\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM python:3.11-slim\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\n"
    )
    return tmp_path


def test_doctor_exit_codes(project, capsys):
    assert cli.main(["doctor"]) == 1
    assert "pip-no-cache-mount" in capsys.readouterr().out
    (project / "Good.Dockerfile").write_text('FROM python:3.11-slim\nCMD ["python"]\n')
    assert cli.main(["doctor", "Good.Dockerfile"]) == 0
    assert cli.main(["doctor", "Missing.Dockerfile"]) == 2
    (project / "Bad.Dockerfile").write_text("FROM x\nRUN <<EOT\nnever closed\n")
    assert cli.main(["doctor", "Bad.Dockerfile"]) == 2
    err = capsys.readouterr().err
    assert "warmbuild: error: Dockerfile 'Missing.Dockerfile' not found" in err and "cannot be parsed" in err


def test_doctor_json(project, capsys):
    assert cli.main(["doctor", "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["version"] == 1 and document["summary"] == {"warn": 1, "info": 0, "fixable": 1}
    (finding,) = document["findings"]
    assert finding["rule"] == "pip-no-cache-mount" and finding["line"] == 3 and finding["severity"] == "warn"
    assert set(finding) == {"rule", "line", "severity", "title", "why", "fix", "fixable"}


def test_doctor_fix_writes_dockerfile_fixed_and_exits_on_what_is_left(project, capsys):
    assert cli.main(["doctor", "--fix"]) == 0  # the one warn finding is fixed
    fixed = (project / "Dockerfile.fixed").read_text()
    assert "uv pip install" in fixed and (project / "Dockerfile").read_text().endswith(
        "pip install -r requirements.txt\n"
    )
    assert "[fixed]" in capsys.readouterr().out
    assert cli.main(["doctor", "--fix", "--output", "-", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.out == fixed and json.loads(captured.err)["findings"][0]["fixed"] is True
    assert cli.main(["doctor", "--output", "x"]) == 2


def test_build_uv_writes_the_rewrite_to_a_temp_folder_with_its_dockerignore(tmp_path):
    dockerfile = tmp_path / "ml.Dockerfile"
    dockerfile.write_text("FROM python:3.11-slim\nRUN pip install torch\n")
    (tmp_path / "ml.Dockerfile.dockerignore").write_text(".git\n")
    out = tmp_path / "out"
    out.mkdir()
    rewritten = uv_dockerfile_for_build(dockerfile, out)
    assert rewritten == out / "ml.Dockerfile" and "uv pip install" in rewritten.read_text()
    assert (out / "ml.Dockerfile.dockerignore").read_text() == ".git\n"
    dockerfile.write_text('FROM python:3.11-slim\nCMD ["python"]\n')
    assert uv_dockerfile_for_build(dockerfile, out) is None


def test_build_uv_is_a_build_flag():
    args = cli.make_parser().parse_args(["build", ".", "--uv"])
    assert args.uv is True
    assert cli.make_parser().parse_args(["build", "."]).uv is False


def test_crlf_files_stay_crlf(tmp_path, capsys):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_bytes(b"FROM python:3.11\r\nWORKDIR /app\r\nRUN pip install \\\r\n    torch\r\n")
    assert cli.main(["doctor", str(dockerfile), "--no-context", "--fix"]) == 0
    fixed = (tmp_path / "Dockerfile.fixed").read_bytes()
    assert fixed.count(b"\n") == fixed.count(b"\r\n") == 6
    assert fixed.endswith(b" \\\r\n    torch\r\n")
