"""Where the time of one solve went, from the steps and sub-statuses of its progress stream.

Phases are wall-clock spans (the union of their steps' intervals), not sums, because BuildKit
runs independent steps in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .progress import StepResult, SubStatus

# Steps that move files from the client into the builder.
CONTEXT_PREFIXES = (
    "[internal] load build context",
    "[internal] load build definition",
    "[internal] load .dockerignore",
)
# Steps that write results out: the image, its push, the cache.
EXPORT_PREFIXES = ("exporting to ", "exporting cache", "exporting content cache", "writing image", "naming to ")


@dataclass(frozen=True)
class SolvePhases:
    context_seconds: float
    build_seconds: float
    export_seconds: float
    push_seconds: float


def is_context_step(name: str) -> bool:
    return name.startswith(CONTEXT_PREFIXES)


def is_export_step(name: str) -> bool:
    return name.startswith(EXPORT_PREFIXES)


def span_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    """Length of the union of closed intervals."""
    total = 0.0
    current_start = current_end = None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        elif end > current_end:
            current_end = end
    if current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


def _intervals(items) -> list[tuple[datetime, datetime]]:
    return [(i.started, i.completed) for i in items if i.started and i.completed and i.completed >= i.started]


def _clipped(intervals: list[tuple[datetime, datetime]], window: tuple[datetime, datetime] | None):
    if window is None:
        return intervals
    low, high = window
    return [(max(a, low), min(b, high)) for a, b in intervals if b > low and a < high]


def solve_phases(
    steps: tuple[StepResult, ...],
    statuses: tuple[SubStatus, ...],
    window: tuple[datetime, datetime] | None = None,
) -> SolvePhases:
    """Phase spans of one solve. Cached steps took no time in it: BuildKit may report the start and
    end of the build that first ran them, so they are left out, and every interval is clipped to
    `window` (when buildctl ran) for the same reason."""
    ran = [s for s in steps if not s.cached]
    context = [s for s in ran if is_context_step(s.name)]
    export = [s for s in ran if is_export_step(s.name)]
    build = [s for s in ran if s.name and not is_context_step(s.name) and not is_export_step(s.name)]
    pushing = [st for st in statuses if st.id.startswith("pushing")]

    def seconds(items) -> float:
        return round(span_seconds(_clipped(_intervals(items), window)), 3)

    return SolvePhases(
        context_seconds=seconds(context),
        build_seconds=seconds(build),
        export_seconds=seconds(export),
        push_seconds=seconds(pushing),
    )
