"""CI platform adapters. Each turns a finished BuildResult into the platform's native outputs.

One small interface, `ResultPublisher.publish`, so that platforms slot in without build logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..report import BuildResult


class ResultPublisher(Protocol):
    def publish(self, result: BuildResult, result_document: dict) -> None:
        """Write outputs/summaries for one build; `result_document` is build-result.json's content."""


def publishers_from_env(environ: Mapping[str, str]) -> list[ResultPublisher]:
    from .github import GitHubPublisher
    from .gitlab import GitLabPublisher

    publishers: list[ResultPublisher] = []
    if environ.get("GITHUB_ACTIONS") == "true":
        publishers.append(GitHubPublisher.from_env(environ))
    if environ.get("GITLAB_CI") == "true":
        publishers.append(GitLabPublisher.from_env(environ))
    return publishers
