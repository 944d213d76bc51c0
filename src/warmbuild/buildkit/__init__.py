"""BuildKit: buildctl command lines, running them, parsing progress and metadata, judging failures."""

from .failures import registry_retry_delay
from .progress import CacheStats, ProgressTracker, StepResult
from .run import (
    SolveAbort,
    SolveOutcome,
    check_buildkit_answers,
    check_reachable,
    find_buildctl,
    ignored_export_errors,
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
    "ignored_export_errors",
    "registry_retry_delay",
    "run_solve",
]
