"""Report files for CI pages: JUnit (one test case per phase) and OpenMetrics, plus a dotenv file
outside GitLab (Jenkins). Each is written only when its variable names a path:

  WARMBUILD_JUNIT    JUnit XML    GitLab artifacts:reports:junit, Jenkins `junit`
  WARMBUILD_METRICS  OpenMetrics  GitLab artifacts:reports:metrics
  WARMBUILD_DOTENV   dotenv       under GitLab the GitLab publisher writes it (default build.env)

The renderers are pure; `ReportFilesPublisher.publish` only writes their text.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..buildkit.phases import is_export_step
from ..report import BuildResult
from .gitlab import dotenv_text
from .outputs import output_values

PHASES = ("queue", "startup", "context", "build", "export", "push")
PHASE_HELP = {
    "queue": "waiting for a builder slot",
    "startup": "starting a builder",
    "context": "sending the build context",
    "build": "running the Dockerfile steps",
    "export": "writing the image and cache (push included)",
    "push": "sending layers and manifests to the registry",
}
_EXIT_PHASE = {5: "push", 6: "queue", 7: "queue", 8: "build"}


def phase_seconds(result: BuildResult) -> dict[str, float]:
    t = result.timings
    return {
        "queue": t.queue_seconds,
        "startup": t.startup_seconds,
        "context": t.context_seconds,
        "build": t.build_seconds,
        "export": t.export_seconds,
        "push": t.push_seconds,
    }


def failed_phase(result: BuildResult) -> str | None:
    """The phase a failed or cancelled build stopped in, for the JUnit failure."""
    if result.status == "success":
        return None
    if result.exit_code in _EXIT_PHASE:
        return _EXIT_PHASE[result.exit_code]
    failed = [s for s in result.steps if s.error]
    if failed and is_export_step(failed[-1].name):
        return "export"
    return "build"


def render_junit(result: BuildResult) -> str:
    """A test suite whose test cases are the build's phases, timed, the failing one marked."""
    failing = failed_phase(result)
    cancelled = result.status == "cancelled"
    suites = ET.Element("testsuites", name="warmbuild")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"warmbuild {result.placement.path} build",
        tests=str(len(PHASES)),
        failures="1" if failing and not cancelled else "0",
        errors="1" if failing and cancelled else "0",
        skipped="0",
        time=f"{result.timings.total_seconds:.3f}",
    )
    if result.started_at is not None:
        suite.set("timestamp", result.started_at.isoformat())
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("builder", result.placement.builder),
        ("path", result.placement.path),
        ("digest", result.image_digest or ""),
        ("cache-hit-ratio", f"{result.cache.ratio:.4f}"),
    ):
        ET.SubElement(properties, "property", name=name, value=value)
    for phase, seconds in phase_seconds(result).items():
        case = ET.SubElement(suite, "testcase", classname="warmbuild.phases", name=phase, time=f"{seconds:.3f}")
        if phase == failing:
            element = ET.SubElement(case, "error" if cancelled else "failure", message=result.error or result.status)
            element.set("type", "cancelled" if cancelled else f"exit-{result.exit_code}")
            element.text = _failure_detail(result)
    suites.set("tests", suite.get("tests"))
    suites.set("failures", suite.get("failures"))
    suites.set("errors", suite.get("errors"))
    suites.set("time", suite.get("time"))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _failure_detail(result: BuildResult) -> str:
    lines = [result.error or result.status]
    lines += [f"step '{s.name}': {s.error}" for s in result.steps if s.error]
    return "\n".join(lines)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_openmetrics(result: BuildResult) -> str:
    """OpenMetrics text (also valid Prometheus text): phase seconds, cache, outcome, placement."""
    out = [
        "# TYPE warmbuild_phase_seconds gauge",
        "# HELP warmbuild_phase_seconds Seconds this build spent per phase (push is part of export).",
    ]
    for phase, seconds in {**phase_seconds(result), "total": result.timings.total_seconds}.items():
        out.append(f'warmbuild_phase_seconds{{phase="{phase}"}} {seconds:.3f}')
    out += [
        "# TYPE warmbuild_cache_hit_ratio gauge",
        "# HELP warmbuild_cache_hit_ratio Share of the build's steps that BuildKit took from its cache.",
        f"warmbuild_cache_hit_ratio {result.cache.ratio:.4f}",
        "# TYPE warmbuild_steps gauge",
        "# HELP warmbuild_steps Steps of the build, cached or run.",
        f'warmbuild_steps{{cached="true"}} {result.cache.cached_steps}',
        f'warmbuild_steps{{cached="false"}} {result.cache.total_steps - result.cache.cached_steps}',
        "# TYPE warmbuild_build_success gauge",
        "# HELP warmbuild_build_success 1 if the build (and push) succeeded, else 0.",
        f"warmbuild_build_success {1 if result.status == 'success' else 0}",
        "# TYPE warmbuild_placement gauge",
        "# HELP warmbuild_placement Where the build ran (always 1; the labels say where).",
        f'warmbuild_placement{{path="{_label(result.placement.path)}",builder="{_label(result.placement.builder_name or result.placement.builder)}"}} 1',
        "# EOF",
    ]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class ReportFilesPublisher:
    junit_file: Path | None = None
    metrics_file: Path | None = None
    dotenv_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ReportFilesPublisher:
        def path(name: str) -> Path | None:
            return Path(environ[name]) if environ.get(name) else None

        gitlab = environ.get("GITLAB_CI") == "true"  # there the GitLab publisher writes the dotenv file
        return cls(path("WARMBUILD_JUNIT"), path("WARMBUILD_METRICS"), None if gitlab else path("WARMBUILD_DOTENV"))

    def publish(self, result: BuildResult, result_document: dict) -> None:
        for path, text in (
            (self.junit_file, lambda: render_junit(result)),
            (self.metrics_file, lambda: render_openmetrics(result)),
            (self.dotenv_file, lambda: dotenv_text(output_values(result, result_document))),
        ):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text(), encoding="utf-8")
