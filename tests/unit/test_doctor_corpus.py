"""The Dockerfile corpus: each file gives exactly its golden findings, and --fix its golden rewrite.

tests/fixtures/dockerfiles/NAME.Dockerfile      a real-world-shaped ML Dockerfile
                          NAME.expected.json    its findings: rule, line, severity, fixable
                          NAME.fixed.Dockerfile what --fix writes (absent: --fix changes nothing)
                          context/              the build context they share (requirement files)
WARMBUILD_UPDATE_GOLDENS=1 rewrites the golden files from the current code; review the diff.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

from warmbuild.doctor.diagnosis import diagnose
from warmbuild.doctor.parse import parse_dockerfile
from warmbuild.doctor.rewrite import fix_dockerfile
from warmbuild.doctor.rules import find_issues

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "dockerfiles"
CONTEXT = CORPUS / "context"
NAMES = sorted(
    p.name[: -len(".Dockerfile")] for p in CORPUS.glob("*.Dockerfile") if not p.name.endswith(".fixed.Dockerfile")
)
UPDATE = os.environ.get("WARMBUILD_UPDATE_GOLDENS") == "1"


def _requirements() -> dict[str, str]:
    return {p.name: p.read_text() for p in CONTEXT.glob("requirements*.txt")}


def _summary(findings) -> list[dict]:
    return [{"rule": f.rule, "line": f.line, "severity": f.severity, "fixable": f.fixable} for f in findings]


def test_the_corpus_covers_the_common_shapes():
    assert len(NAMES) >= 10
    clean = [n for n in NAMES if json.loads((CORPUS / f"{n}.expected.json").read_text()) == []]
    assert clean, "at least one already-good Dockerfile with zero findings"
    assert sum((CORPUS / f"{n}.fixed.Dockerfile").exists() for n in NAMES) >= 5


@pytest.mark.parametrize("name", NAMES)
def test_findings_match_the_golden_file(name):
    diagnosis = diagnose(CORPUS / f"{name}.Dockerfile", CONTEXT)
    expected_file = CORPUS / f"{name}.expected.json"
    if UPDATE:
        expected_file.write_text(json.dumps(_summary(diagnosis.findings), indent=2) + "\n")
    assert _summary(diagnosis.findings) == json.loads(expected_file.read_text())
    for finding in diagnosis.findings:
        assert finding.why and finding.fix and "\n" not in finding.why + finding.fix


@pytest.mark.parametrize("name", NAMES)
def test_fix_matches_the_golden_rewrite(name):
    original = (CORPUS / f"{name}.Dockerfile").read_text()
    fixed = diagnose(CORPUS / f"{name}.Dockerfile", CONTEXT).fixed_text
    golden = CORPUS / f"{name}.fixed.Dockerfile"
    if UPDATE:
        if fixed != original:
            golden.write_text(fixed)
        elif golden.exists():
            golden.unlink()
    assert fixed == (golden.read_text() if golden.exists() else original)


@pytest.mark.parametrize("name", NAMES)
def test_fixing_a_fixed_file_changes_nothing(name):
    fixed = fix_dockerfile((CORPUS / f"{name}.Dockerfile").read_text(), _requirements())
    assert fix_dockerfile(fixed, _requirements()) == fixed


@pytest.mark.parametrize("name", NAMES)
def test_the_fixed_file_keeps_exactly_the_findings_marked_unfixable(name):
    original = parse_dockerfile((CORPUS / f"{name}.Dockerfile").read_text())
    before = find_issues(original, requirement_texts=_requirements())
    after = find_issues(
        parse_dockerfile(fix_dockerfile(original.text, _requirements())), requirement_texts=_requirements()
    )
    assert collections.Counter(f.rule for f in after) == collections.Counter(f.rule for f in before if not f.fixable)


@pytest.mark.parametrize("name", NAMES)
def test_the_fix_keeps_comments_args_and_untouched_lines(name):
    original = (CORPUS / f"{name}.Dockerfile").read_text()
    fixed_lines = collections.Counter(fix_dockerfile(original, _requirements()).splitlines())
    doc = parse_dockerfile(original)
    touched = {
        line
        for ins in doc.instructions
        if ins.cmd in ("RUN", "COPY", "ADD")
        for line in range(ins.start_line, ins.end_line + 1)
    }
    for number, line in enumerate(original.splitlines(), start=1):
        if number not in touched:
            assert fixed_lines[line] > 0, f"line {number} lost: {line!r}"
