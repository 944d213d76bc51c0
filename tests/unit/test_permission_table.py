"""One permission list: the CI Role's rules, rendered from the chart by deploy/render-permissions,
quoted verbatim in README.md, docs/deploy.md, docs/jenkins.md, gitlab/README.md and docs/security.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "render-permissions"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_every_quoted_copy_equals_the_charts_ci_role():
    done = run("--check")
    assert done.returncode == 0, done.stderr


def test_the_table_has_one_row_per_rule_of_the_rendered_ci_role():
    table = run().stdout.splitlines()
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "manifests" / "warmbuild.yaml").read_text()) if d]
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "warmbuild-ci")
    rows = table[2:]
    assert len(rows) == len(role["rules"])
    for row, rule in zip(rows, role["rules"]):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == ", ".join(rule["resources"]) and cells[2] == ", ".join(rule["verbs"])
        assert cells[4], "every rule says what it is for"


def test_a_copy_that_differs_from_the_chart_is_named(tmp_path):
    readme = (REPO / "README.md").read_text()
    widened = readme.replace(
        "| get, list, watch, create, update, patch |", "| get, list, watch, create, update, patch, delete |", 1
    )
    assert widened != readme
    script = tmp_path / "deploy" / "render-permissions"
    script.parent.mkdir()
    script.write_text(SCRIPT.read_text())
    (tmp_path / "deploy" / "manifests").mkdir()
    (tmp_path / "deploy" / "manifests" / "warmbuild.yaml").write_text(
        (REPO / "deploy/manifests/warmbuild.yaml").read_text()
    )
    for relative in ("docs/deploy.md", "docs/jenkins.md", "gitlab/README.md", "docs/security.md"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_text((REPO / relative).read_text())
    (tmp_path / "README.md").write_text(widened)
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "README.md: the quoted CI permissions differ from the chart's Role" in done.stderr
    assert "docs/deploy.md" not in done.stderr
