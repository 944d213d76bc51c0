"""GitHub Actions: file commands (outputs, state, step summary) and workflow commands.

Written here rather than taken from a toolkit package: each is a few lines, and the Python
`actions-toolkit` package fell short (see docs/architecture.md, "CI front doors").
Everything here is pure: functions return the text; callers write it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..report import BuildResult, render_markdown_summary
from .outputs import output_values

SUMMARY_LIMIT_BYTES = 1024 * 1024  # GitHub rejects larger step summaries


def heredoc_entry(name: str, value: str) -> str:
    """`name<<DELIM\\nvalue\\nDELIM\\n` with a delimiter that cannot occur in the value."""
    delimiter = f"ghadelimiter_{uuid.uuid4()}"
    while delimiter in value:
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def escape_data(value: str) -> str:
    """Escaping of a workflow command's message, as the runner unescapes it."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    """Escaping of a workflow command's property value (`file=`, `title=` …)."""
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def workflow_command(command: str, message: str = "", **properties: str | int | None) -> str:
    """`::command key=value,…::message`; properties that are None are left out."""
    props = ",".join(f"{key}={escape_property(str(value))}" for key, value in properties.items() if value is not None)
    return f"::{command}{' ' + props if props else ''}::{escape_data(message)}"


def mask_commands(secret: str) -> list[str]:
    """`::add-mask::` lines for a secret: the whole value, and each line of a multi-line one.

    The runner matches masks line by line in the log, so a multi-line secret (a key, a kubeconfig
    field) is registered per line as well. Very short lines are skipped: masking "}" or "-" would
    blank out ordinary log text and hide nothing.
    """
    value = secret.strip()
    if not value:
        return []
    commands = [workflow_command("add-mask", value)]
    lines = [line.strip() for line in value.splitlines()]
    if len(lines) > 1:
        commands += [workflow_command("add-mask", line) for line in lines if len(line) >= 4]
    return commands


def group_start(title: str) -> str:
    return workflow_command("group", title)


def group_end() -> str:
    return workflow_command("endgroup")


@dataclass(frozen=True)
class GitHubPublisher:
    output_file: Path | None
    summary_file: Path | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GitHubPublisher:
        output = environ.get("GITHUB_OUTPUT")
        summary = environ.get("GITHUB_STEP_SUMMARY")
        return cls(Path(output) if output else None, Path(summary) if summary else None)

    def publish(self, result: BuildResult, result_document: dict) -> None:
        if self.output_file is not None:
            with self.output_file.open("a", encoding="utf-8") as f:
                for name, value in output_values(result, result_document).items():
                    f.write(heredoc_entry(name, value))
        if self.summary_file is not None:
            summary = render_markdown_summary(result)
            if len(summary.encode()) > SUMMARY_LIMIT_BYTES:
                summary = summary.encode()[: SUMMARY_LIMIT_BYTES - 100].decode("utf-8", "ignore") + "\n\n(truncated)\n"
            with self.summary_file.open("a", encoding="utf-8") as f:
                f.write(summary)
