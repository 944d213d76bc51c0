"""Read a Dockerfile and its context, and diagnose it: findings and the --fix text (the IO around the pure rules)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .analysis import RunInfo, walk
from .context import context_savings, read_requirement_files
from .parse import Dockerfile, parse_dockerfile
from .rewrite import fix_dockerfile, rewrite_pip_to_uv
from .rules import Finding, find_issues


@dataclass(frozen=True)
class Diagnosis:
    dockerfile: Path
    context: Path | None
    findings: tuple[Finding, ...]
    fixed_text: str  # the --fix rewrite of the file (equal to the file when nothing is fixable)


def read_dockerfile(path: Path) -> Dockerfile:
    if not path.is_file():
        raise InputError(f"Dockerfile '{path}' not found: pass the path of an existing Dockerfile")
    try:
        with open(path, encoding="utf-8", newline="") as file:  # keep \r\n: rewrites are byte-for-byte
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read Dockerfile '{path}' ({exc.__class__.__name__}): check the path and that it is UTF-8 text"
        ) from None
    return parse_dockerfile(text, str(path))


def requirement_file_names(doc: Dockerfile) -> tuple[str, ...]:
    names: list[str] = []
    for item in walk(doc):
        if isinstance(item, RunInfo):
            for pip in item.pip:
                names += list(pip.requirement_files + pip.constraint_files)
    return tuple(dict.fromkeys(names))


def diagnose(dockerfile: Path, context: Path | None) -> Diagnosis:
    """Read the Dockerfile (and the context, when given), find what costs time, and the --fix text."""
    doc = read_dockerfile(dockerfile)
    if context is not None and not context.is_dir():
        raise InputError(f"build context '{context}' is not a directory: pass --context DIR")
    requirements = read_requirement_files(context, requirement_file_names(doc)) if context is not None else {}
    ignore = context_savings(context, dockerfile, walk(doc)) if context is not None else None
    findings = find_issues(doc, requirement_texts=requirements, ignore=ignore)
    return Diagnosis(
        dockerfile=dockerfile,
        context=context,
        findings=findings,
        fixed_text=fix_dockerfile(doc.text, requirements),
    )


def uv_dockerfile_for_build(dockerfile: Path, workdir: Path) -> Path | None:
    """`build --uv`: the Dockerfile with pip → uv applied, written to WORKDIR under the same name.

    The Dockerfile-specific NAME.dockerignore is copied along, because BuildKit looks for it next
    to the Dockerfile. None when nothing was rewritten (the build then uses the original file).
    """
    doc = read_dockerfile(dockerfile)
    rewritten = rewrite_pip_to_uv(doc.text)
    if rewritten == doc.text:
        return None
    target = workdir / dockerfile.name
    target.write_text(rewritten, encoding="utf-8", newline="")
    specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if specific.is_file():
        shutil.copyfile(specific, workdir / specific.name)
    return target
