"""BuildKit: buildctl command lines, running them, parsing progress and metadata."""

from .progress import CacheStats, ProgressTracker, StepResult
from .run import (
    SolveAbort,
    SolveOutcome,
    check_buildkit_answers,
    check_reachable,
    find_buildctl,
    is_transient_push_failure,
    run_solve,
)

__all__ = [
    "CacheStats",
    "ProgressTracker",
    "SolveAbort",
    "SolveOutcome",
    "StepResult",
    "check_buildkit_answers",
    "check_reachable",
    "find_buildctl",
    "is_transient_push_failure",
    "run_solve",
]
