"""Renderings of a doctor report: readable text (default) and JSON (pure)."""

from __future__ import annotations

from .rules import Finding

JSON_VERSION = 1


def report_to_dict(dockerfile: str, findings: tuple[Finding, ...], fixed: bool = False) -> dict:
    return {
        "version": JSON_VERSION,
        "dockerfile": dockerfile,
        "findings": [
            {
                "rule": f.rule,
                "line": f.line,
                "severity": f.severity,
                "title": f.title,
                "why": f.why,
                "fix": f.fix,
                "fixable": f.fixable,
                **({"fixed": f.fixable} if fixed else {}),
            }
            for f in findings
        ],
        "summary": summary_counts(findings),
    }


def summary_counts(findings: tuple[Finding, ...]) -> dict[str, int]:
    return {
        "warn": sum(f.severity == "warn" for f in findings),
        "info": sum(f.severity == "info" for f in findings),
        "fixable": sum(f.fixable for f in findings),
    }


def render_text(dockerfile: str, findings: tuple[Finding, ...], fixed: bool = False) -> str:
    if not findings:
        return f"{dockerfile}: no findings\n"
    lines = []
    for f in findings:
        where = f"{dockerfile}:{f.line}" if f.line is not None else f"{dockerfile} (context)"
        mark = " [fixed]" if fixed and f.fixable else (" [fixable]" if f.fixable else "")
        lines.append(f"{where}: {f.severity}: {f.rule}: {f.title}{mark}")
        lines.append(f"    why: {f.why}")
        lines.append(f"    fix: {f.fix}")
    counts = summary_counts(findings)
    done = "fixed" if fixed else "fixable with --fix"
    lines.append(
        f"{len(findings)} finding{'s' if len(findings) != 1 else ''}: {counts['warn']} warn, {counts['info']} info; "
        f"{counts['fixable']} {done}"
    )
    return "\n".join(lines) + "\n"
