"""GitHub Actions file commands: outputs (heredoc form) and the step summary.

Written here rather than taken from a toolkit package: the heredoc form with a random delimiter
and the step summary are a few lines each (see docs/architecture.md).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..report import BuildResult, render_markdown_summary
from .outputs import output_values

SUMMARY_LIMIT_BYTES = 1024 * 1024  # GitHub rejects larger step summaries


def heredoc_entry(name: str, value: str) -> str:
    """`name<<DELIM\\nvalue\\nDELIM\\n` with a delimiter that cannot occur in the value."""
    delimiter = f"ghadelimiter_{uuid.uuid4()}"
    while delimiter in value:
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


@dataclass(frozen=True)
class GitHubPublisher:
    output_file: Path | None
    summary_file: Path | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "GitHubPublisher":
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
