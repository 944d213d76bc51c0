"""Safe rewrites of a Dockerfile (pure): text in, text out, every untouched byte kept.

Two passes, each on a fresh parse of the text before it:
  1. order: dependency installs moved ahead of the code they do not need (whole instruction blocks
     move, with the comments above them);
  2. RUN edits: pip → uv with a cache mount (uv itself installed once per stage, from the package
     index, into /opt/uv), apt cache mounts, and the apt clean-ups that would empty those caches.
Running the rewrite on its own output changes nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from .analysis import (
    APT_MOUNTS,
    UV_BIN,
    UV_HOME,
    UV_MOUNT,
    UV_VERSION,
    CopyInfo,
    PipInstall,
    RunInfo,
    is_local_path,
    walk,
)
from .parse import Dockerfile, Instruction, parse_dockerfile
from .shell import Command, Word

APT_TARGETS = ("/var/cache/apt", "/var/lib/apt")
BOOTSTRAP_COMMENT = "# uv from the package index, outside the image's Python environments (warmbuild doctor --fix)"


@dataclass(frozen=True)
class Reorder:
    """Move a dependency install ahead of the code COPY that needlessly precedes it."""

    code_copy: CopyInfo
    run: RunInfo
    dependency_copies: tuple[CopyInfo, ...]  # already in the file, between code COPY and RUN
    new_copies: tuple[str, ...]  # COPY lines to add (when the code COPY was `COPY . .`)


# ---------------------------------------------------------------- what can be fixed


def pip_fixable(pip: PipInstall) -> bool:
    return pip.blocker is None and not pip.only_uv and not pip.no_index


def uv_head(pip: PipInstall) -> str:
    """The words that replace `pip install` (or `python -m pip install`)."""
    parts = [UV_BIN, "pip", "install", "--python", pip.interpreter]
    if not pip.no_compile:
        parts.append("--compile-bytecode")  # pip compiles .pyc files by default; uv only when asked
    parts += ["--system-certs", "--link-mode=copy"]
    if pip.custom_index:
        parts += ["--index-strategy", "unsafe-best-match"]  # pip's rule: best version across all indexes
    return " ".join(parts)


def bootstrap_run(pip: PipInstall, doc_text: str) -> str:
    launcher = doc_text[pip.launcher[0].start : pip.launcher[-1].end]
    return f"RUN {launcher} install --no-cache-dir --target {UV_HOME} uv=={UV_VERSION}"


def plan_reorders(items, requirement_texts: Mapping[str, str]) -> tuple[Reorder, ...]:
    """The dependency installs that can move ahead of code without changing what gets built."""
    plans: list[Reorder] = []
    for i, item in enumerate(items):
        if not isinstance(item, CopyInfo) or not (item.whole_context or item.code):
            continue
        earlier = [x for x in items[:i] if _stage_of(x) == item.stage.index]
        if any(isinstance(x, RunInfo) and x.installs_from_dependency_files for x in earlier):
            continue  # dependencies already installed before the code: what follows is the project's own
        following = list(items[i + 1 :])
        dependency_copies = []
        while following and isinstance(following[0], CopyInfo) and following[0].dependency_only:
            dependency_copies.append(following.pop(0))
        if not following or not isinstance(following[0], RunInfo):
            continue
        run = following[0]
        later = [x for x in following[1:] if _stage_of(x) == item.stage.index]
        if not run.installs_dependencies or any(isinstance(x, RunInfo) and x.installs_dependencies for x in later):
            continue
        files = _self_contained_files(run, requirement_texts)
        if files is None or item.instruction.flags:
            continue
        if item.whole_context and not dependency_copies:
            if item.dest_path().rstrip("/") != item.stage.workdir.rstrip("/") or any(
                s not in (".", "./") for s in item.sources
            ):
                continue
            plans.append(Reorder(item, run, (), _copy_lines(files)))
        elif item.code and dependency_copies and _code_copy_is_independent(item, dependency_copies, files):
            plans.append(Reorder(item, run, tuple(dependency_copies), ()))
    return tuple(plans)


def _stage_of(item) -> int:
    return item.stage.index if isinstance(item, (CopyInfo, RunInfo)) else -2


def _self_contained_files(run: RunInfo, requirement_texts: Mapping[str, str]) -> tuple[str, ...] | None:
    """The requirement files a RUN reads, if that RUN reads nothing else from the context."""
    if run.words is None or run.other_installs or run.uv or not run.pip:
        return None
    if any(m.type == "bind" for m in run.mounts):
        return None
    pip_commands = {id(p.command) for p in run.pip}
    if any(id(c) not in pip_commands for c in run.commands):
        return None
    files: list[str] = []
    for pip in run.pip:
        if pip.blocker and "option" in pip.blocker or pip.editables or pip.writes_elsewhere:
            return None
        if any(is_local_path(p) for p in pip.packages + pip.find_links):
            return None
        for name in pip.requirement_files + pip.constraint_files:
            normal = posixpath.normpath(name)
            if name.startswith("/") or normal.startswith("..") or "$" in name:
                return None
            text = requirement_texts.get(normal)
            if text is None or not requirements_self_contained(text):
                return None
            files.append(normal)
    return tuple(dict.fromkeys(files)) if files else None


def requirements_self_contained(text: str) -> bool:
    """No line of a requirements file pulls in other files or local paths."""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r", "--requirement", "-c", "--constraint", "-e", "--editable", ".", "/", "~", "file:")):
            return False
        if "@ file:" in line or line.startswith(("-f ./", "--find-links ./", "-f .", "--find-links .")):
            return False
    return True


def _copy_lines(files: tuple[str, ...]) -> tuple[str, ...]:
    by_dir: dict[str, list[str]] = {}
    for name in files:
        by_dir.setdefault(posixpath.dirname(name), []).append(name)
    return tuple(
        f"COPY {' '.join(names)} {directory + '/' if directory else './'}" for directory, names in by_dir.items()
    )


def _code_copy_is_independent(code: CopyInfo, dependency_copies: list[CopyInfo], files: tuple[str, ...]) -> bool:
    """Moving the code COPY after the install must not change any file either of them writes."""
    copied = {posixpath.basename(s.rstrip("/")) for d in dependency_copies for s in d.sources}
    if not all(posixpath.basename(f) in copied for f in files):
        return False
    code_dest = code.dest_path()
    for dep in dependency_copies:
        dep_dest = dep.dest_path()
        for source in code.sources:
            is_file = "." in posixpath.basename(source) and not source.endswith("/") and "*" not in source
            if is_file:
                if any(posixpath.basename(source) == posixpath.basename(s) for s in dep.sources):
                    return False
            elif (
                dep_dest.startswith(code_dest if code_dest.endswith("/") else code_dest + "/") or dep_dest == code_dest
            ):
                return False
    return True


# ---------------------------------------------------------------- the rewrite


def fix_dockerfile(
    text: str,
    requirement_texts: Mapping[str, str] | None = None,
    *,
    reorder: bool = True,
    pip: bool = True,
    apt: bool = True,
) -> str:
    """Apply every safe rewrite; the result parses, and fixing it again changes nothing."""
    if reorder:
        text = _reorder(parse_dockerfile(text), plan_reorders(walk(parse_dockerfile(text)), requirement_texts or {}))
    return _edit_runs(parse_dockerfile(text), pip=pip, apt=apt)


def rewrite_pip_to_uv(text: str) -> str:
    """Only pip → uv (what `warmbuild build --uv` applies)."""
    return fix_dockerfile(text, reorder=False, apt=False)


def _blocks(doc: Dockerfile) -> list[tuple[int, int]]:
    """Character span of each instruction together with the comment and blank lines above it."""
    spans = []
    previous_end_line = 0
    for ins in doc.instructions:
        first = previous_end_line + 1 if spans else ins.start_line
        start, _ = doc.line_span(first, first)
        _, end = doc.line_span(ins.end_line, ins.end_line)
        spans.append((start, end))
        previous_end_line = ins.end_line
    return spans


def _reorder(doc: Dockerfile, plans: tuple[Reorder, ...]) -> str:
    if not plans:
        return doc.text
    index = {ins: i for i, ins in enumerate(doc.instructions)}
    spans = _blocks(doc)
    chunks = [doc.text[s:e] for s, e in spans]
    chunks = [c if c.endswith("\n") else c + doc.newline for c in chunks]
    for plan in plans:
        code_i, run_i = index[plan.code_copy.instruction], index[plan.run.instruction]
        if plan.new_copies:
            indent = _indent(doc, plan.code_copy.instruction)
            added = "".join(f"{indent}{line}{doc.newline}" for line in plan.new_copies)
            chunks[code_i] = added + chunks[run_i] + chunks[code_i]
            chunks[run_i] = ""
        else:
            chunks[run_i] = chunks[run_i] + chunks[code_i]
            chunks[code_i] = ""
    head = doc.text[: spans[0][0]]
    tail = doc.text[spans[-1][1] :]
    body = "".join(chunks)
    if not doc.text[: spans[-1][1]].endswith("\n") and not tail:
        body = body[: -len(doc.newline)]
    return head + body + tail


def _indent(doc: Dockerfile, ins: Instruction) -> str:
    start, end = doc.line_span(ins.start_line, ins.start_line)
    line = doc.text[start:end]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _edit_runs(doc: Dockerfile, *, pip: bool, apt: bool) -> str:
    items = walk(doc)
    edits: list[tuple[int, int, str]] = []
    bootstrapped: set[int] = set()
    uv_stages: set[str] = set()  # names of stages that get uv in this pass (stages FROM them inherit it)
    for position, item in enumerate(items):
        if not isinstance(item, RunInfo) or item.words is None:
            continue
        mounts: list[str] = []
        if pip:
            rewritten = [p for p in item.pip if pip_fixable(p)]
            for command in rewritten:
                edits += _pip_edits(command, doc.text)
            uv_unmounted = any(u.blocker is None for u in item.uv) and not item.has_cache_mount(
                "/root/.cache/uv", "/root/.cache"
            )
            if (rewritten or uv_unmounted) and not item.has_cache_mount("/root/.cache/uv", "/root/.cache"):
                mounts.append(UV_MOUNT)
            inherited = item.stage.parent in uv_stages
            if rewritten and item.stage.name and (item.stage.has_uv or inherited or item.stage.index in bootstrapped):
                uv_stages.add(item.stage.name)
            if rewritten and not item.stage.has_uv and not inherited and item.stage.index not in bootstrapped:
                bootstrapped.add(item.stage.index)
                if item.stage.name:
                    uv_stages.add(item.stage.name)
                anchor = _bootstrap_anchor(items, position)
                offset, _ = doc.line_span(anchor.start_line, anchor.start_line)
                indent = _indent(doc, anchor)
                nl = doc.newline
                edits.append(
                    (
                        offset,
                        offset,
                        f"{indent}{BOOTSTRAP_COMMENT}{nl}{indent}{bootstrap_run(rewritten[0], doc.text)}{nl}",
                    )
                )
        if apt and item.apt and _apt_editable(item):
            for target, flag in zip(APT_TARGETS, APT_MOUNTS):
                if not item.has_cache_mount(target, target + "/archives", target + "/lists"):
                    mounts.append(flag)
            for command in item.apt_cleanups:
                span = _removal_span(item.words, command)
                if span:
                    edits.append((span[0], span[1], ""))
        if mounts:
            offset = _after_keyword(doc, item.instruction)
            edits.append((offset, offset, " ".join(mounts) + " "))
    text = doc.text
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def apt_fixable(run: RunInfo) -> bool:
    return bool(run.apt) and _apt_editable(run)


def _apt_editable(run: RunInfo) -> bool:
    return (
        run.words is not None
        and run.stage.shell in ("sh", "bash", "dash", "ash", "zsh", "ksh")
        and run.stage.user in ("", "root", "0")
    )


def _pip_edits(pip: PipInstall, doc_text: str) -> list[tuple[int, int, str]]:
    edits = [(pip.head[0].start, pip.head[-1].end, _head_replacement(pip, doc_text))]
    words = pip.command.words
    for group in pip.drop:
        at = words.index(group[0])
        if at >= len(pip.head):
            edits.append((words[at - 1].end, group[-1].end, ""))
    return edits


def _head_replacement(pip: PipInstall, doc_text: str) -> str:
    """uv's words, plus the options that stood between `pip` and `install` (those uv needs)."""
    dropped = {id(g[0]) for g in pip.drop}
    kept = [doc_text[g[0].start : g[-1].end] for g in pip.pre_options if id(g[0]) not in dropped]
    return " ".join([uv_head(pip)] + kept)


def uv_command_text(pip: PipInstall, doc_text: str) -> str:
    """The command as the rewrite will leave it, continuations folded, for the fix line of a finding."""
    words = pip.command.words
    dropped = {id(w) for g in pip.drop for w in g}
    rest = [doc_text[w.start : w.end] for w in words[len(pip.head) :] if id(w) not in dropped]
    assignments = [doc_text[w.start : w.end] for w in pip.command.assignments]
    return " ".join(assignments + [_head_replacement(pip, doc_text)] + rest)


def _bootstrap_anchor(items, position: int) -> Instruction:
    """uv goes in before the COPYs that feed this RUN, so changing requirements never reinstalls uv."""
    anchor = items[position].instruction
    stage = items[position].stage.index
    i = position - 1
    while i >= 0 and isinstance(items[i], CopyInfo) and items[i].from_context and items[i].stage.index == stage:
        anchor = items[i].instruction
        i -= 1
    return anchor


def _after_keyword(doc: Dockerfile, ins: Instruction) -> int:
    offset, end = doc.line_span(ins.start_line, ins.start_line)
    while offset < end and doc.text[offset] in " \t":
        offset += 1
    offset += 3  # RUN
    while offset < end and doc.text[offset] in " \t":
        offset += 1
    return offset


def _removal_span(words: tuple[Word, ...], command: Command) -> tuple[int, int] | None:
    """The command and the operator that joins it to the rest: `&& rm -rf …` or `rm -rf … &&`."""
    first = words.index(command.assignments[0] if command.assignments else command.words[0])
    last = words.index(command.words[-1])
    if first >= 2 and words[first - 1].operator and words[first - 1].text in ("&&", ";"):
        return words[first - 2].end, words[last].end
    if last + 2 < len(words) and words[last + 1].operator and words[last + 1].text in ("&&", ";"):
        return words[first].start, words[last + 2].start
    return None
