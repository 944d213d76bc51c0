"""The output values every platform publishes, named once (kebab-case; platforms re-case them)."""

from __future__ import annotations

import json

from ..report import BuildResult


def output_values(result: BuildResult, result_document: dict) -> dict[str, str]:
    t = result.timings
    return {
        "digest": result.image_digest or "",
        "imageid": result.config_digest or "",
        "metadata": json.dumps(result_document["image"], separators=(",", ":")),
        "builder": result.placement.builder,
        "path": result.placement.path,
        "queue-seconds": f"{t.queue_seconds:.3f}",
        "startup-seconds": f"{t.startup_seconds:.3f}",
        "build-seconds": f"{t.build_seconds:.3f}",
        "push-seconds": f"{t.push_seconds:.3f}",
        "total-seconds": f"{t.total_seconds:.3f}",
        "cache-hit-ratio": f"{result.cache.ratio:.4f}",
        "attempts": str(len(result.attempts)),  # builders tried: 2 when a lost builder's build ran again
    }
