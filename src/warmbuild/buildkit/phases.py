"""Where the time of one solve went, from the steps and sub-statuses of its progress stream.

Phases are wall-clock spans (the union of their steps' intervals), not sums, because BuildKit
runs independent steps in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .progress import StepResult, SubStatus

# Steps that move files from the client into the builder.
CONTEXT_PREFIXES = ("[internal] load build context", "[internal] load build definition", "[internal] load .dockerignore")
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


def solve_phases(steps: tuple[StepResult, ...], statuses: tuple[SubStatus, ...]) -> SolvePhases:
    context = [s for s in steps if is_context_step(s.name)]
    export = [s for s in steps if is_export_step(s.name)]
    build = [s for s in steps if s.name and not is_context_step(s.name) and not is_export_step(s.name)]
    pushing = [st for st in statuses if st.id.startswith("pushing")]
    return SolvePhases(
        context_seconds=round(span_seconds(_intervals(context)), 3),
        build_seconds=round(span_seconds(_intervals(build)), 3),
        export_seconds=round(span_seconds(_intervals(export)), 3),
        push_seconds=round(span_seconds(_intervals(pushing)), 3),
    )
