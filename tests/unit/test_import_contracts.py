"""The layout rules of docs/architecture.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "warmbuild"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the warmbuild modules `path` imports (relative imports resolved)."""
    package = ["warmbuild", *path.relative_to(SRC).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.add(".".join([*base, *(node.module.split(".") if node.module else [])]))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("warmbuild")}


def test_kube_does_not_import_pool():
    for path in (SRC / "kube").glob("*.py"):
        assert not any(m.startswith("warmbuild.pool") for m in imported_modules(path)), path


def test_names_is_pure():
    assert imported_modules(SRC / "kube" / "names.py") <= {"warmbuild.errors"}


def test_pure_policy_does_not_import_kube():
    for name in ("policy.py", "affinity.py"):
        assert not any(m.startswith("warmbuild.kube") for m in imported_modules(SRC / "pool" / name)), name
