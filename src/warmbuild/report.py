"""BuildResult and its renderings: build-result.json, the stderr table, a Markdown summary.

The timings are computed elsewhere (buildkit, placement); this module only arranges them.
The JSON schema is versioned: `schema_version` changes when a field changes meaning or goes away;
new fields may be added within a version. See docs/build-result.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .buildkit.progress import CacheStats, StepResult

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Timings:
    """Seconds per phase of one build. queue + startup happen before the solve; the rest inside it."""

    queue_seconds: float = 0.0  # waiting for a slot
    startup_seconds: float = 0.0  # starting a builder (ephemeral pods)
    context_seconds: float = 0.0  # sending the build context and Dockerfile
    build_seconds: float = 0.0  # running the steps
    export_seconds: float = 0.0  # writing the image and cache, push included
    push_seconds: float = 0.0  # sending layers and manifests to the registry
    total_seconds: float = 0.0  # wall clock from start to finish


@dataclass(frozen=True)
class Placement:
    builder: str  # address the build ran on
    path: str  # direct | warm | spill | ephemeral | none (the build never reached a builder)
    builder_name: str | None = None
    affine: bool | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One try of a build on one builder. A pool build whose builder was lost before its push
    began is tried again elsewhere (`--retries`): every try is one Attempt, the last is the build's."""

    number: int  # 1, 2, …
    builder: str  # address ("" when placement itself failed)
    builder_name: str | None
    path: str  # direct | warm | spill | ephemeral | none
    outcome: str  # success | failed | cancelled | lost (the builder went away or broke; see `reason`)
    reason: str | None = None  # why it ended, when it did not succeed
    cause: str | None = None  # lost only: connection lost | unreachable | not answering | disk full | …
    seconds: float = 0.0  # from its placement to its end
    marked_unhealthy: bool = False  # the builder was taken out of the rotation for a cool-down


@dataclass(frozen=True)
class BuildResult:
    status: str  # success | failed | cancelled
    placement: Placement
    timings: Timings
    cache: CacheStats
    steps: tuple[StepResult, ...] = ()
    image_digest: str | None = None
    config_digest: str | None = None
    image_names: tuple[str, ...] = ()
    pushed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    exit_code: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)
    attempts: tuple[Attempt, ...] = ()  # every try, the last one included; empty: never placed
    registry_retries: int = 0  # solves run again on the same builder after a registry-side push failure

    @property
    def lost_builder(self) -> bool:
        """The build ended because its (last) builder was lost: nothing it says about the workload."""
        return bool(self.attempts) and self.attempts[-1].outcome == "lost"


def attempt_to_dict(attempt: Attempt) -> dict:
    return {
        "number": attempt.number,
        "builder": attempt.builder,
        "builder_name": attempt.builder_name,
        "path": attempt.path,
        "outcome": attempt.outcome,
        "reason": attempt.reason,
        "cause": attempt.cause,
        "seconds": attempt.seconds,
        "marked_unhealthy": attempt.marked_unhealthy,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def result_to_dict(result: BuildResult, version: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "warmbuild_version": version,
        "status": result.status,
        "exit_code": result.exit_code,
        "error": result.error,
        "image": {
            "digest": result.image_digest,
            "config_digest": result.config_digest,
            "names": list(result.image_names),
            "pushed": result.pushed,
        },
        "placement": {
            "builder": result.placement.builder,
            "builder_name": result.placement.builder_name,
            "path": result.placement.path,
            "affine": result.placement.affine,
            "reason": result.placement.reason,
        },
        "timings": {
            "queue_seconds": result.timings.queue_seconds,
            "startup_seconds": result.timings.startup_seconds,
            "context_seconds": result.timings.context_seconds,
            "build_seconds": result.timings.build_seconds,
            "export_seconds": result.timings.export_seconds,
            "push_seconds": result.timings.push_seconds,
            "total_seconds": result.timings.total_seconds,
        },
        "cache": {
            "cached_steps": result.cache.cached_steps,
            "total_steps": result.cache.total_steps,
            "ratio": round(result.cache.ratio, 4),
        },
        "steps": [
            {
                "name": s.name,
                "cached": s.cached,
                "seconds": round(s.duration_seconds, 3),
                "started": _iso(s.started),
                "completed": _iso(s.completed),
                "error": s.error,
            }
            for s in result.steps
        ],
        "warnings": list(result.warnings),
        "attempts": len(result.attempts),
        "attempt_history": [attempt_to_dict(a) for a in result.attempts],
        "registry_retries": result.registry_retries,
        "started_at": _iso(result.started_at),
        "finished_at": _iso(result.finished_at),
    }


def write_result_file(result: BuildResult, path: Path, version: str) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result_to_dict(result, version), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # a CI artifact, readable like any file the job writes
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def phase_rows(result: BuildResult) -> list[tuple[str, str]]:
    t = result.timings
    return [
        ("queue", _seconds(t.queue_seconds)),
        ("startup", _seconds(t.startup_seconds)),
        ("context", _seconds(t.context_seconds)),
        ("build", _seconds(t.build_seconds)),
        ("export", _seconds(t.export_seconds)),
        ("  of which push", _seconds(t.push_seconds)),
        ("total", _seconds(t.total_seconds)),
    ]


def slowest_steps(result: BuildResult, count: int = 5) -> list[StepResult]:
    real = [s for s in result.steps if not s.cached and s.duration_seconds > 0]
    return sorted(real, key=lambda s: s.duration_seconds, reverse=True)[:count]


def render_table(result: BuildResult) -> str:
    """The readable summary printed to stderr after every build."""
    lines = [f"warmbuild: {result.status}" + (f" — {result.error}" if result.error else "")]
    rows: list[tuple[str, str]] = [
        ("builder", f"{result.placement.builder} ({result.placement.path})"),
    ]
    if result.placement.reason:
        rows.append(("placement", result.placement.reason))
    if result.image_digest:
        rows.append(("digest", result.image_digest))
    for name in result.image_names:
        rows.append(("image", name + (" (pushed)" if result.pushed else "")))
    rows.append(
        ("cache", f"{result.cache.cached_steps}/{result.cache.total_steps} steps cached ({result.cache.ratio:.0%})")
    )
    if len(result.attempts) > 1:
        for attempt in result.attempts:
            rows.append((f"attempt {attempt.number}", attempt_line(attempt)))
    if result.registry_retries:
        rows.append(("registry", f"pushed again {result.registry_retries}x after registry failures"))
    rows.extend(phase_rows(result))
    width = max(len(k) for k, _ in rows)
    lines.extend(f"  {k.ljust(width)}  {v}" for k, v in rows)
    slow = slowest_steps(result, 3)
    if slow:
        lines.append("  slowest steps:")
        lines.extend(f"    {_seconds(s.duration_seconds):>7}  {s.name}" for s in slow)
    return "\n".join(lines)


def attempt_line(attempt: Attempt) -> str:
    where = attempt.builder_name or attempt.builder or "no builder"
    line = f"{where} ({attempt.path}): {attempt.outcome}, {_seconds(attempt.seconds)}"
    if attempt.reason and attempt.outcome != "success":
        line += f" — {attempt.reason}"
    if attempt.marked_unhealthy:
        line += " [marked unhealthy]"
    return line


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def render_markdown_summary(result: BuildResult) -> str:
    """Step summary for CI pages: phases, placement, cache hits per step, slowest steps."""
    icon = {"success": "✅", "failed": "❌", "cancelled": "⚠️"}.get(result.status, "")
    out = [f"### {icon} warmbuild: {result.status}", ""]
    if result.error:
        out += [f"> {_md_escape(result.error)}", ""]
    out += ["| | |", "|---|---|"]
    out.append(f"| builder | `{result.placement.builder}` ({result.placement.path}) |")
    if result.placement.reason:
        out.append(f"| placement | {_md_escape(result.placement.reason)} |")
    if result.image_digest:
        out.append(f"| digest | `{result.image_digest}` |")
    for name in result.image_names:
        out.append(f"| image | `{_md_escape(name)}`{' (pushed)' if result.pushed else ''} |")
    out.append(
        f"| cache | {result.cache.cached_steps}/{result.cache.total_steps} steps cached ({result.cache.ratio:.0%}) |"
    )
    if len(result.attempts) > 1 or result.registry_retries:
        out += [
            "",
            "**Attempts**",
            "",
            "| # | builder | path | outcome | time | reason |",
            "|---:|---|---|---|---:|---|",
        ]
        for a in result.attempts:
            reason = "" if a.outcome == "success" else _md_escape(a.reason or "")[:300]
            marked = " (marked unhealthy)" if a.marked_unhealthy else ""
            where = _md_escape(a.builder_name or a.builder or "-")
            out.append(
                f"| {a.number} | `{where}` | {a.path} | {a.outcome}{marked} | {_seconds(a.seconds)} | {reason} |"
            )
        if result.registry_retries:
            out += ["", f"The push was tried again {result.registry_retries}x after registry failures (same builder)."]
    out += ["", "| phase | time |", "|---|---:|"]
    out += [f"| {k.strip()} | {v} |" for k, v in phase_rows(result)]
    shown = [s for s in result.steps if s.name][:100]
    if shown:
        out += ["", "<details><summary>Steps</summary>", "", "| step | cached | time |", "|---|:---:|---:|"]
        out += [
            f"| {_md_escape(s.name)[:200]} | {'yes' if s.cached else ''} | {_seconds(s.duration_seconds)} |"
            for s in shown
        ]
        out += ["", "</details>"]
    slow = slowest_steps(result)
    if slow:
        out += ["", "**Slowest steps**", ""]
        out += [f"1. {_md_escape(s.name)[:200]} — {_seconds(s.duration_seconds)}" for s in slow]
    return "\n".join(out) + "\n"
