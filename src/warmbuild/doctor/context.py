"""The build context on disk: what a .dockerignore would keep out of it, and the requirement files.

`ignore_patterns`/`is_ignored` follow BuildKit's .dockerignore rules (moby patternmatcher): cleaned
paths, `*`, `?`, `[...]`, `**` across directories, `!` exceptions, last match wins, and a pattern
that matches a directory covers everything below it. `context_savings` is the IO edge: it walks
the real directory and adds up file sizes.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from .analysis import CopyInfo

TOOL_DIRS = (".git", ".venv", "node_modules", "__pycache__")
DATA_DIRS = ("data", "datasets", "checkpoints")
WEIGHT_EXTENSIONS = (".pt", ".bin", ".safetensors", ".ckpt", ".onnx", ".h5")
MAX_REQUIREMENTS_BYTES = 1 << 20


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    exclusion: bool  # a `!pattern` line: put back what an earlier line left out


@dataclass(frozen=True)
class Saving:
    pattern: str  # the .dockerignore line that would leave these files out
    bytes: int
    files: int


@dataclass(frozen=True)
class IgnoreReport:
    path: Path  # the .dockerignore BuildKit reads for this Dockerfile (or would)
    exists: bool
    savings: tuple[Saving, ...]

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.savings)


def ignore_patterns(text: str) -> tuple[Pattern, ...]:
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        line = line[1:].strip() if exclusion else line
        cleaned = posixpath.normpath(line).lstrip("/")
        if cleaned in (".", ""):
            continue
        patterns.append(Pattern(re.compile(_translate(cleaned)), exclusion))
    return tuple(patterns)


def _translate(pattern: str) -> str:
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            close = pattern.find("]", i + 1)
            if close < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : close]
                out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
                i = close + 1
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    out.append("$")
    return "".join(out)


def is_ignored(path: str, patterns: tuple[Pattern, ...]) -> bool:
    """`path` is relative to the context, with '/' separators."""
    parents = [path]
    while "/" in parents[-1]:
        parents.append(parents[-1].rsplit("/", 1)[0])
    ignored = False
    for pattern in patterns:
        if any(pattern.regex.match(p) for p in parents):
            ignored = not pattern.exclusion
    return ignored


def category_pattern(path: str) -> str | None:
    """The .dockerignore line for a heavy file nobody needs in the context, or None."""
    parts = path.split("/")
    for depth, part in enumerate(parts[:-1]):
        if part == ".git":
            return "/".join(parts[: depth + 1])
        if part in TOOL_DIRS:
            return f"**/{part}"
        if part in DATA_DIRS:
            return "/".join(parts[: depth + 1])
    extension = posixpath.splitext(parts[-1])[1].lower()
    if extension in WEIGHT_EXTENSIONS:
        return f"**/*{extension}"
    return None


def dockerignore_path(context: Path, dockerfile: Path) -> Path:
    """BuildKit reads NAME.dockerignore next to the Dockerfile first, then CONTEXT/.dockerignore."""
    specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return specific if specific.is_file() else context / ".dockerignore"


def copied_sources(items) -> tuple[str, ...]:
    """Context paths the Dockerfile names in COPY/ADD (other than `.`): never suggested for ignoring."""
    sources = []
    for item in items:
        if isinstance(item, CopyInfo) and item.from_context and not item.whole_context:
            sources.extend(posixpath.normpath(s).lstrip("/") for s in item.sources)
    return tuple(sources)


def _is_copied(path: str, sources: tuple[str, ...]) -> bool:
    for source in sources:
        if path == source or path.startswith(source.rstrip("/") + "/") or fnmatch.fnmatch(path, source):
            return True
    return False


def context_savings(context: Path, dockerfile: Path, items) -> IgnoreReport:
    """Walk the context and add up what the .dockerignore should leave out but does not."""
    ignore_file = dockerignore_path(context, dockerfile)
    exists = ignore_file.is_file()
    patterns = ignore_patterns(ignore_file.read_text(errors="replace")) if exists else ()
    prune = not any(p.exclusion for p in patterns)
    sources = copied_sources(items)
    totals: dict[str, list[int]] = {}
    for root, dirs, files in os.walk(context, followlinks=False):
        relative_root = os.path.relpath(root, context).replace(os.sep, "/")
        prefix = "" if relative_root == "." else relative_root + "/"
        if prune:
            dirs[:] = [d for d in dirs if not is_ignored(prefix + d, patterns)]
        for name in files:
            path = prefix + name
            pattern = category_pattern(path)
            if pattern is None or _is_copied(path, sources) or is_ignored(path, patterns):
                continue
            try:
                size = os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
            entry = totals.setdefault(pattern, [0, 0])
            entry[0] += size
            entry[1] += 1
    savings = tuple(Saving(p, b, n) for p, (b, n) in sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0])))
    return IgnoreReport(path=ignore_file, exists=exists, savings=savings)


def read_requirement_files(context: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Requirement files named by `pip install -r/-c`, read from the context when they are there."""
    texts = {}
    for name in names:
        normal = posixpath.normpath(name)
        if normal.startswith(("/", "..")) or "$" in normal:
            continue
        path = context / normal
        try:
            if path.is_file() and path.stat().st_size <= MAX_REQUIREMENTS_BYTES:
                texts[normal] = path.read_text(errors="replace")
        except OSError:
            continue
    return texts
