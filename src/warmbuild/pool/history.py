"""Recent builds of a pool, kept in the cluster: one ConfigMap per pool, bounded in size.

The placement policy reads it to estimate how long each path will take for a workload; every build
appends one record (compare-and-swap on resourceVersion, retried; a failure to record is a warning,
never a failed build). Workload keys are stored as hashes: repository names stay out of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from ..kube.client import KubeClient, KubeConflict, KubeNotFound
from ..kube.names import HISTORY_LABEL, configmaps_path, history_configmap_name

MAX_RECORDS = 1000  # ~150 bytes each: well under the 1 MiB ConfigMap limit
DATA_KEY = "builds.jsonl"


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


def key_hash(workload_key: str) -> str:
    return hashlib.sha256(workload_key.encode()).hexdigest()[:16]


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


def read_history(client: KubeClient, namespace: str, pool: str) -> tuple[BuildRecord, ...]:
    try:
        body = client.request("GET", configmaps_path(namespace, history_configmap_name(pool))).body
    except KubeNotFound:
        return ()
    return parse_records((body.get("data") or {}).get(DATA_KEY, ""))


def append_record(client: KubeClient, namespace: str, pool: str, record: BuildRecord, attempts: int = 8) -> bool:
    """Add one record, keeping the newest MAX_RECORDS. True when written."""
    name = history_configmap_name(pool)
    for _ in range(attempts):
        try:
            body = client.request("GET", configmaps_path(namespace, name)).body
        except KubeNotFound:
            body = None
        if body is None:
            created = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "labels": {HISTORY_LABEL: pool}},
                "data": {DATA_KEY: render_records([record])},
            }
            try:
                client.request("POST", configmaps_path(namespace), body=created)
                return True
            except KubeConflict:
                continue
        records = list(parse_records((body.get("data") or {}).get(DATA_KEY, ""))) + [record]
        body["data"] = {**(body.get("data") or {}), DATA_KEY: render_records(records[-MAX_RECORDS:])}
        try:
            client.request("PUT", configmaps_path(namespace, name), body=body)
            return True
        except KubeConflict:
            continue  # another build recorded first: read again
        except KubeNotFound:
            continue
    return False
