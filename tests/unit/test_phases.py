"""Solve phases: wall-clock unions of step intervals, checked on synthetic intervals and a real stream."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from warmbuild.buildkit.phases import is_context_step, is_export_step, solve_phases, span_seconds
from warmbuild.buildkit.progress import ProgressTracker, StepResult, SubStatus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "progress"
T0 = datetime(2026, 11, 29, 13, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iv(a: float, b: float) -> tuple[datetime, datetime]:
    return at(a), at(b)


def tracker_for(name: str) -> ProgressTracker:
    tracker = ProgressTracker()
    for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines():
        tracker.feed_line(line)
    return tracker


# --- span_seconds -------------------------------------------------------------------------------


def test_span_of_nothing_is_zero():
    assert span_seconds([]) == 0.0


def test_span_of_disjoint_intervals_is_their_sum():
    assert span_seconds([iv(0, 1), iv(5, 7), iv(10, 10.5)]) == pytest.approx(1 + 2 + 0.5)


def test_span_of_overlapping_intervals_counts_the_overlap_once():
    assert span_seconds([iv(0, 4), iv(3, 6)]) == pytest.approx(6)


def test_span_of_nested_intervals_is_the_outer_one():
    assert span_seconds([iv(0, 10), iv(2, 3), iv(4, 9)]) == pytest.approx(10)


def test_span_does_not_depend_on_input_order():
    intervals = [iv(8, 9), iv(0, 2), iv(1, 3), iv(2.5, 2.7), iv(5, 6)]
    expected = 3 + 1 + 1  # [0,3] + [5,6] + [8,9]
    assert span_seconds(intervals) == pytest.approx(expected)
    assert span_seconds(list(reversed(intervals))) == pytest.approx(expected)


def test_span_of_touching_intervals_is_continuous():
    assert span_seconds([iv(0, 1), iv(1, 2)]) == pytest.approx(2)


def test_span_of_zero_length_intervals_is_zero():
    assert span_seconds([iv(3, 3), iv(4, 4)]) == 0.0


def test_span_when_a_later_interval_is_swallowed_then_extended():
    # [0,10] swallows [1,2]; [9,12] extends it; [20,21] is separate
    assert span_seconds([iv(1, 2), iv(0, 10), iv(20, 21), iv(9, 12)]) == pytest.approx(12 + 1)


# --- classification -------------------------------------------------------------------------------


def test_step_classification():
    assert is_context_step("[internal] load build context")
    assert is_context_step("[internal] load build definition from Dockerfile")
    assert is_context_step("[internal] load .dockerignore")
    assert not is_context_step("[2/6] WORKDIR /app")
    assert is_export_step("exporting to image")
    assert is_export_step("exporting cache to registry")
    assert not is_export_step("[5/6] RUN pip install")


def test_solve_phases_on_synthetic_steps():
    def step(n, name, a, b, cached=False):
        return StepResult(n, f"sha256:{n}", name, at(a), at(b), cached, None)

    steps = (
        step(1, "[internal] load build definition from Dockerfile", 0, 0.5),
        step(2, "[internal] load build context", 0.4, 1.0),
        step(3, "[1/3] FROM base", 1.0, 2.0),
        step(4, "[2/3] RUN a", 2.0, 5.0),
        step(5, "[3/3] RUN b", 3.0, 6.0),  # parallel with RUN a
        step(6, "exporting to image", 6.0, 9.0),
        StepResult(7, "sha256:7", "", None, None, False, None),  # nameless: ignored
    )
    statuses = (
        SubStatus("sha256:6", "exporting layers", at(6.0), at(7.0)),
        SubStatus("sha256:6", "pushing layers", at(7.0), at(8.0)),
        SubStatus("sha256:6", "pushing manifest for x", at(7.5), at(8.5)),
        SubStatus("sha256:6", "pushing unfinished", at(8.5), None),
    )
    phases = solve_phases(steps, statuses)
    assert phases.context_seconds == pytest.approx(1.0)
    assert phases.build_seconds == pytest.approx(5.0)  # [1,6], not 1+3+3
    assert phases.export_seconds == pytest.approx(3.0)
    assert phases.push_seconds == pytest.approx(1.5)  # [7,8.5]


# --- the recorded cold build ------------------------------------------------------------------------


def test_solve_phases_on_the_recorded_cold_stream():
    tracker = tracker_for("ml-app-cold-push.jsonl")
    steps = tracker.steps()
    phases = solve_phases(steps, tracker.sub_statuses())

    assert phases.context_seconds >= 0
    assert phases.build_seconds >= 0
    assert phases.export_seconds >= 0
    assert phases.push_seconds >= 0
    assert phases.push_seconds > 0  # the recording pushed
    assert phases.push_seconds <= phases.export_seconds  # the push happens inside the export step
    assert phases.build_seconds > 1  # the pip install step ran

    pip = next(s for s in steps if s.name.startswith("[5/6] RUN pip install"))
    assert phases.build_seconds >= round(pip.duration_seconds, 3) - 0.001
    # no phase is longer than the whole stream
    starts = [s.started for s in steps if s.started]
    ends = [s.completed for s in steps if s.completed]
    wall = (max(ends) - min(starts)).total_seconds()
    for value in (phases.context_seconds, phases.build_seconds, phases.export_seconds):
        assert value <= wall + 0.001


def test_code_change_rebuild_spends_less_time_building_than_the_cold_build():
    cold = tracker_for("ml-app-cold-push.jsonl")
    warm = tracker_for("ml-app-code-change-push.jsonl")
    cold_phases = solve_phases(cold.steps(), cold.sub_statuses())
    warm_phases = solve_phases(warm.steps(), warm.sub_statuses())
    assert warm_phases.build_seconds < cold_phases.build_seconds
    assert warm_phases.push_seconds <= warm_phases.export_seconds


def test_failing_stream_has_no_export_or_push():
    tracker = tracker_for("failing-run-step.jsonl")
    phases = solve_phases(tracker.steps(), tracker.sub_statuses())
    assert phases.export_seconds == 0.0
    assert phases.push_seconds == 0.0
    assert phases.build_seconds > 0
