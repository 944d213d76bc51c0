"""Report files for CI pages: JUnit (read back with junitparser), OpenMetrics (read back with
prometheus_client's parsers), GitLab log section markers, and when each file is written."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from junitparser import Error, Failure, JUnitXml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_families

from warmbuild.buildkit.progress import CacheStats, StepResult
from warmbuild.ci.gitlab import section_end, section_start
from warmbuild.ci.report_files import PHASES, ReportFilesPublisher, failed_phase, render_junit, render_openmetrics
from warmbuild.report import BuildResult, Placement, Timings

T0 = datetime(2026, 11, 29, 13, 0, tzinfo=timezone.utc)


def step(n: int, name: str, seconds: float, cached=False, error=None) -> StepResult:
    return StepResult(n, f"sha256:{n:064x}", name, T0, T0 + timedelta(seconds=seconds), cached, error)


def result(status="success", exit_code=0, error=None, steps=None) -> BuildResult:
    return BuildResult(
        status=status,
        placement=Placement(
            "tcp://127.0.0.11:1234", "warm", builder_name="builders-0", affine=True, reason='affine "x"'
        ),
        timings=Timings(1.5, 0.0, 0.25, 30.0, 4.0, 2.5, 36.0),
        cache=CacheStats(3, 4),
        steps=steps
        if steps is not None
        else (step(1, "[1/2] FROM base", 0, cached=True), step(2, "[2/2] RUN make", 30)),
        image_digest="sha256:" + "ab" * 32 if status == "success" else None,
        started_at=T0,
        error=error,
        exit_code=exit_code,
    )


def parse_junit(text: str, tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(text)
    return JUnitXml.fromfile(str(path))


def test_junit_has_one_timed_case_per_phase(tmp_path):
    xml = parse_junit(render_junit(result()), tmp_path)
    (suite,) = list(xml)
    cases = {case.name: case for case in suite}
    assert list(cases) == list(PHASES)
    assert cases["queue"].time == 1.5 and cases["build"].time == 30.0 and cases["push"].time == 2.5
    assert suite.tests == 6 and suite.failures == 0 and suite.errors == 0 and suite.time == 36.0
    assert all(case.is_passed for case in cases.values())
    assert {p.name: p.value for p in suite.properties()}["path"] == "warm"


def test_a_failed_step_fails_its_phase(tmp_path):
    failed = result(
        "failed",
        1,
        "step '[2/2] RUN make' failed: exit code: 2",
        steps=(step(1, "[1/2] FROM base", 0), step(2, "[2/2] RUN make", 3, error="exit code: 2")),
    )
    (suite,) = list(parse_junit(render_junit(failed), tmp_path))
    cases = {case.name: case for case in suite}
    (failure,) = cases["build"].result
    assert isinstance(failure, Failure) and failure.message == failed.error and failure.type == "exit-1"
    assert "exit code: 2" in failure.text
    assert suite.failures == 1 and all(cases[p].is_passed for p in PHASES if p != "build")


def test_failures_land_in_the_phase_they_happened_in():
    assert failed_phase(result()) is None
    assert failed_phase(result("failed", 5, "refused")) == "push"
    assert failed_phase(result("failed", 7, "no slot", steps=())) == "queue"
    assert failed_phase(result("failed", 1, "x", steps=(step(3, "exporting to image", 1, error="boom"),))) == "export"


def test_a_cancelled_build_is_an_error_not_a_failure(tmp_path):
    (suite,) = list(parse_junit(render_junit(result("cancelled", 143, "cancelled by SIGTERM")), tmp_path))
    (error,) = {case.name: case for case in suite}["build"].result
    assert isinstance(error, Error) and error.type == "cancelled" and suite.errors == 1 and suite.failures == 0


def test_metrics_parse_as_openmetrics_and_prometheus_text():
    text = render_openmetrics(result())
    for parse in (openmetrics_families, prometheus_families):
        families = {f.name: f for f in parse(text)}
        phases = {s.labels["phase"]: s.value for s in families["warmbuild_phase_seconds"].samples}
        assert phases == {
            "queue": 1.5,
            "startup": 0.0,
            "context": 0.25,
            "build": 30.0,
            "export": 4.0,
            "push": 2.5,
            "total": 36.0,
        }
        assert families["warmbuild_cache_hit_ratio"].samples[0].value == 0.75
        assert {s.labels["cached"]: s.value for s in families["warmbuild_steps"].samples} == {"true": 3, "false": 1}
        assert families["warmbuild_build_success"].samples[0].value == 1
        (placement,) = families["warmbuild_placement"].samples
        assert placement.labels == {"path": "warm", "builder": "builders-0"}
    failed = {f.name: f for f in openmetrics_families(render_openmetrics(result("failed", 1, "x")))}
    assert failed["warmbuild_build_success"].samples[0].value == 0


def test_section_markers():
    start = section_start("warmbuild build", "Build on tcp://127.0.0.2:1234\nsecond line", 1700000000.7)
    assert (
        start
        == "\x1b[0Ksection_start:1700000000:warmbuild_build[collapsed=true]\r\x1b[0KBuild on tcp://127.0.0.2:1234 second line"
    )
    assert section_end("warmbuild build", 1700000042) == "\x1b[0Ksection_end:1700000042:warmbuild_build\r\x1b[0K"


def test_report_files_are_written_when_named(tmp_path):
    assert ReportFilesPublisher.from_env({}) == ReportFilesPublisher()
    env = {
        "WARMBUILD_JUNIT": str(tmp_path / "j.xml"),
        "WARMBUILD_METRICS": str(tmp_path / "m.txt"),
        "WARMBUILD_DOTENV": str(tmp_path / "b.env"),
    }
    publisher = ReportFilesPublisher.from_env(env)
    publisher.publish(result(), {"image": {"digest": "sha256:" + "ab" * 32}})
    assert (tmp_path / "j.xml").read_text().startswith("<?xml")
    assert (tmp_path / "m.txt").read_text().endswith("# EOF\n")
    assert "IMAGE_DIGEST=sha256:abab" in (tmp_path / "b.env").read_text()
    # Under GitLab the GitLab publisher owns the dotenv file.
    assert ReportFilesPublisher.from_env({**env, "GITLAB_CI": "true"}).dotenv_file is None
