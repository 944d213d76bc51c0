"""The pool's build history in the cluster: one ConfigMap per pool, bounded in size.

Placement reads it to estimate how long each path will take for a workload (`policy`), and the
same `PoolHistory` appends the record of every build it placed, so what is read and what is written
live side by side. Appends are compare-and-swap on resourceVersion, retried; a failure to record is
a warning, never a failed build.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ..errors import WarmbuildError
from ..kube.client import KubeClient, KubeConflict, KubeNotFound, connect
from ..kube.names import HISTORY_LABEL, configmaps_path, history_configmap_name
from ..report import BuildResult
from .records import HISTORY_REFRESH_SECONDS, MAX_RECORDS, BuildRecord, parse_records, render_records

DATA_KEY = "builds.jsonl"


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


def record_of(key_hash: str, started_at: datetime, result: BuildResult) -> BuildRecord | None:
    """The history record of a finished build; None for a cancelled one (its time says nothing)."""
    if result.status == "cancelled":
        return None
    t = result.timings
    return BuildRecord(
        key=key_hash,
        started=started_at.timestamp(),
        path=result.placement.path,
        builder=result.placement.builder_name or result.placement.builder,
        queue_seconds=t.queue_seconds,
        startup_seconds=t.startup_seconds,
        build_seconds=round(t.total_seconds - t.queue_seconds - t.startup_seconds, 3),
        total_seconds=t.total_seconds,
        cache_ratio=round(result.cache.ratio, 4),
        status=result.status,
    )


class PoolHistory:
    """One pool's history as placement sees it: read at most every `refresh` seconds, appended after
    each build. Without a readable history the policy's priors decide (said once through `log`)."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        pool: str,
        refresh: float = HISTORY_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client, self.namespace, self.pool = client, namespace, pool
        self.refresh, self.clock = refresh, clock
        self._records: tuple[BuildRecord, ...] = ()
        self._read_at: float | None = None
        self._warned = False

    def recent(self, log: Callable[[str], None] = lambda _line: None) -> tuple[BuildRecord, ...]:
        if self._read_at is None or self.clock() - self._read_at > self.refresh:
            self._read_at = self.clock()
            try:
                self._records = read_history(self.client, self.namespace, self.pool)
            except WarmbuildError as exc:
                if not self._warned:
                    log(f"build history unavailable, estimating from priors: {exc.message}")
                    self._warned = True
        return self._records

    def record(self, record: BuildRecord) -> bool:
        """Append one record; False (never an error) when it could not be written."""
        try:
            return append_record(self.client, self.namespace, self.pool, record)
        except WarmbuildError:
            return False


def add_history_commands(sub, add_cluster_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    history = sub.add_parser("history", help="the pool's recent build records")
    history_sub = history.add_subparsers(dest="history_command", required=True, parser_class=type(history))
    export = history_sub.add_parser(
        "export", help="write the pool's build history as JSON Lines (input for simulate/plan)"
    )
    export.add_argument(
        "--pool", default=os.environ.get("WARMBUILD_POOL", "default"), help="pool name (env WARMBUILD_POOL)"
    )
    export.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    add_cluster_arguments(export)


def command_history_export(args: argparse.Namespace) -> int:
    client = connect(args.kubeconfig, args.kube_context)
    records = read_history(client, args.namespace, args.pool)
    text = render_records(records)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    where = "" if args.output == "-" else f" written to {args.output}"
    print(
        f"warmbuild: {len(records)} build records of pool '{args.pool}' (namespace {args.namespace}){where}",
        file=sys.stderr,
        flush=True,
    )
    return 0
