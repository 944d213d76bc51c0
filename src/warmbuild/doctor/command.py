"""Wiring for `warmbuild doctor` and `warmbuild build --uv` (arguments, files, exit codes).

Exit codes of `doctor`: 0 no finding of severity warn (info findings allowed), 1 at least one warn
finding (with --fix: one that --fix did not fix), 2 bad input (missing or unparsable Dockerfile,
context not a directory, unwritable output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dockerfile", nargs="?", default="Dockerfile", help="the Dockerfile to examine (default: ./Dockerfile)"
    )
    parser.add_argument(
        "--context",
        default=None,
        help="build context whose .dockerignore and requirement files are checked (default: the Dockerfile's folder)",
    )
    parser.add_argument(
        "--no-context", action="store_true", help="examine the Dockerfile alone, without reading the context"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--fix", action="store_true", help="write the Dockerfile with the safe rewrites applied")
    parser.add_argument(
        "--output",
        default=None,
        help="where --fix writes (default: DOCKERFILE.fixed next to the original; '-' for stdout, the report then goes to stderr)",
    )


def command_doctor(args: argparse.Namespace) -> int:
    from .diagnosis import diagnose
    from .report import render_text, report_to_dict
    from .rules import exit_status

    dockerfile = Path(args.dockerfile)
    if args.output is not None and not args.fix:
        raise InputError("--output goes with --fix: add --fix, or drop --output")
    context = None if args.no_context else Path(args.context) if args.context else dockerfile.parent
    diagnosis = diagnose(dockerfile, context)
    findings = diagnosis.findings
    report_out = sys.stdout
    if args.fix:
        output = args.output or str(dockerfile) + ".fixed"
        if output == "-":
            sys.stdout.write(diagnosis.fixed_text)
            report_out = sys.stderr
        else:
            try:
                Path(output).write_text(diagnosis.fixed_text, encoding="utf-8", newline="")
            except OSError as exc:
                raise InputError(f"cannot write --output '{output}' ({exc.strerror}): pass a writable path") from None
            print(f"warmbuild: wrote {output}", file=sys.stderr)
        findings = tuple(f for f in findings if not f.fixable)
    if args.json:
        print(
            json.dumps(report_to_dict(str(dockerfile), diagnosis.findings, fixed=args.fix), indent=2), file=report_out
        )
    else:
        report_out.write(render_text(str(dockerfile), diagnosis.findings, fixed=args.fix))
    return exit_status(findings)


@contextlib.contextmanager
def uv_dockerfile(uv: bool, context: str, file: str | None) -> Iterator[Path | None]:
    """`build --uv`: the pip → uv rewrite of the Dockerfile, kept in a temporary folder for the build.

    Yields the rewritten file, or None without --uv or when there is nothing to rewrite (the
    original is then built as is). The context stays the same; only the Dockerfile changes.
    """
    if not uv:
        yield None
        return
    from .diagnosis import uv_dockerfile_for_build

    original = Path(file) if file else Path(context) / "Dockerfile"
    with tempfile.TemporaryDirectory(prefix="warmbuild-uv-") as workdir:
        rewritten = uv_dockerfile_for_build(original, Path(workdir))
        if rewritten is None:
            print(f"warmbuild: --uv: no pip install to rewrite in {original}; building it as is", file=sys.stderr)
        else:
            print(f"warmbuild: --uv: building {original} with pip install rewritten to uv", file=sys.stderr)
        yield rewritten
