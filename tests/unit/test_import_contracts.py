"""The layout's rules (pyproject's [tool.importlinter], docs/architecture.md "Layers"), checked with
import-linter on the installed source: a change that breaks one fails the suite, not a review."""

from __future__ import annotations

import os
from pathlib import Path

from importlinter import cli as importlinter_cli

ROOT = Path(__file__).resolve().parents[2]


def test_every_import_contract_is_kept(capsys):
    cwd = os.getcwd()
    os.chdir(ROOT)  # the contracts name packages; import-linter reads them from pyproject.toml here
    try:
        status = importlinter_cli.lint_imports(
            config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True
        )
    finally:
        os.chdir(cwd)
    report = capsys.readouterr().out
    assert status == 0, report
    assert "0 broken" in report and " kept" in report
