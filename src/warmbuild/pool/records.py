"""Build records: what the pool's history holds of one finished build, and its text form. Pure.

The placement policy reads records to estimate how long each path takes for a workload, and the
simulator replays them. Workload keys are stored as hashes (`workload.key_hash`): repository names
stay out of the history. Reading and writing them in the cluster is `history`'s job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MAX_RECORDS = 1000  # ~150 bytes each: well under the 1 MiB ConfigMap limit
HISTORY_REFRESH_SECONDS = 30.0  # how long a read history serves placement before it is read again


@dataclass(frozen=True)
class BuildRecord:
    key: str  # hash of the workload key
    started: float  # epoch seconds, API-server clock
    path: str  # warm | spill | ephemeral
    builder: str
    queue_seconds: float
    startup_seconds: float
    build_seconds: float  # the buildctl run: context, steps, export, push
    total_seconds: float
    cache_ratio: float
    status: str  # success | failed | cancelled


def parse_records(text: str) -> tuple[BuildRecord, ...]:
    records = []
    fields = set(BuildRecord.__dataclass_fields__)
    for line in text.splitlines():
        try:
            data = json.loads(line)
            records.append(BuildRecord(**{k: v for k, v in data.items() if k in fields}))
        except (ValueError, TypeError):
            continue  # a damaged line costs one record, not the history
    return tuple(records)


def render_records(records: tuple[BuildRecord, ...] | list[BuildRecord]) -> str:
    return "".join(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in records)
