"""Foldable log sections per phase: GitHub `::group::`, GitLab `section_start`, else nothing.

`log_section` brackets the lines a phase prints (placement, the buildctl progress), so a CI page
shows one collapsed line per phase and the result table after them. GitHub groups cannot nest;
warmbuild never opens one inside another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from . import github, gitlab


@contextmanager
def log_section(log: TextIO, environ: Mapping[str, str], name: str, title: str) -> Iterator[None]:
    """Print the platform's start marker, run the block, print the end marker (also on errors)."""
    if environ.get("GITHUB_ACTIONS") == "true":
        start, end = github.group_start(title), lambda: github.group_end()
    elif environ.get("GITLAB_CI") == "true":
        start, end = gitlab.section_start(name, title, time.time()), lambda: gitlab.section_end(name, time.time())
    else:
        yield
        return
    print(start, file=log, flush=True)
    try:
        yield
    finally:
        print(end(), file=log, flush=True)
