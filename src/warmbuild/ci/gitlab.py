"""GitLab CI: a dotenv report (artifacts:reports:dotenv) with the build's outputs, and the
collapsible log sections of the job log (pure text)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..report import BuildResult
from .outputs import output_values

DOTENV_NAMES = {
    "digest": "IMAGE_DIGEST",
    "imageid": "IMAGE_ID",
    "builder": "BUILDER",
    "path": "BUILD_PATH",
    "queue-seconds": "QUEUE_SECONDS",
    "startup-seconds": "STARTUP_SECONDS",
    "build-seconds": "BUILD_SECONDS",
    "push-seconds": "PUSH_SECONDS",
    "total-seconds": "TOTAL_SECONDS",
    "cache-hit-ratio": "CACHE_HIT_RATIO",
    "attempts": "BUILD_ATTEMPTS",
}


def section_start(name: str, title: str, when: float) -> str:
    """A collapsed log section's start marker: `ESC[0Ksection_start:TIME:NAME[collapsed=true]CR ESC[0KTITLE`."""
    title = re.sub(r"[\r\n\x1b]+", " ", title)
    return f"\x1b[0Ksection_start:{int(when)}:{_section_name(name)}[collapsed=true]\r\x1b[0K{title}"


def section_end(name: str, when: float) -> str:
    return f"\x1b[0Ksection_end:{int(when)}:{_section_name(name)}\r\x1b[0K"


def _section_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def dotenv_text(values: Mapping[str, str]) -> str:
    """GitLab's dotenv: one KEY=VALUE per line, values on a single line."""
    lines = []
    for name, key in DOTENV_NAMES.items():
        value = re.sub(r"[\r\n]+", " ", values.get(name, ""))
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class GitLabPublisher:
    dotenv_file: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GitLabPublisher:
        return cls(Path(environ.get("WARMBUILD_DOTENV", "build.env")))

    def publish(self, result: BuildResult, result_document: dict) -> None:
        self.dotenv_file.write_text(dotenv_text(output_values(result, result_document)), encoding="utf-8")
