"""Prometheus metrics of the scheduler, and the autoscaling signal.

Slot gauges are not kept in memory: a custom collector reads the pool's pods and Leases when
/metrics is scraped (the same `read_pool_status` as `warmbuild pool status`), so a scrape shows
what the Leases say at that moment, whichever replica answers. Counters and histograms are this
replica's own; so is `warmbuild_pool_waiting_acquirers`.

`warmbuild_pool_desired_builders` = ceil((slots in use + waiting acquirers) / slots per builder):
builds in flight plus queued demand, in builders. Scale the builder StatefulSet on it, not on CPU
(a quiet build uses little CPU and would be killed by a scale-down). With several replicas each
sees every slot in use but only its own waiters; docs/architecture.md gives the PromQL that sums
the waiters across replicas.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..errors import WarmbuildError
from ..pool.membership import DEFAULT_SLOTS
from ..pool.status import PoolStatus

WAIT_BUCKETS = (0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BUILD_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OUTCOMES = ("affine", "wait", "spill", "fallback")


def desired_builders(slots_in_use: int, waiting: int, slots_per_builder: float) -> int:
    """Builders needed for the builds in flight plus those queued."""
    if slots_per_builder <= 0:
        slots_per_builder = DEFAULT_SLOTS
    return math.ceil((slots_in_use + waiting) / slots_per_builder)


def slots_per_builder(status: PoolStatus) -> float:
    """Slots of a builder that can take builds (mean over ready, non-draining builders)."""
    usable = [len(b.slots) for b in status.builders if b.ready and not b.terminating and not b.draining]
    return sum(usable) / len(usable) if usable and sum(usable) else float(DEFAULT_SLOTS)


class SchedulerMetrics:
    def __init__(self, pools: tuple[str, ...], read_status: Callable[[str], PoolStatus]):
        self.pools = pools
        self.read_status = read_status
        self.registry = CollectorRegistry(auto_describe=True)
        self._waiting = {pool: 0 for pool in pools}
        self._lock = threading.Lock()
        self.acquisitions = Counter(
            "warmbuild_scheduler_acquisitions",
            "Acquire requests that ended, by outcome: affine (at once), "
            "wait (affine, after waiting), spill (another builder), fallback (no slot within the wait)",
            ["pool", "outcome"],
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "warmbuild_scheduler_wait_seconds",
            "Time from the first acquire request to the answer, over all long-polls, by path (warm, spill, fallback)",
            ["pool", "path"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.build_seconds = Histogram(
            "warmbuild_build_duration_seconds",
            "How long a slot was held, acquire to release, as the client reports it, by path",
            ["pool", "path"],
            buckets=BUILD_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "warmbuild_scheduler_request_duration_seconds",
            "Scheduler HTTP requests, by route and status code (acquire includes its long-poll)",
            ["route", "code"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "warmbuild_scheduler_auth_failures",
            "Refused requests: 401 no or invalid token, 403 pool or slot not allowed",
            ["code"],
            registry=self.registry,
        )
        self.renewals = Counter(
            "warmbuild_scheduler_renewals",
            "Renew requests by outcome (renewed, lost)",
            ["outcome"],
            registry=self.registry,
        )
        self.kube_requests = Counter(
            "warmbuild_scheduler_kube_requests",
            "Requests this replica sent to the Kubernetes API (watches counted when started)",
            ["verb", "resource"],
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(self))

    def count_kube_request(self, verb: str, resource: str) -> None:
        self.kube_requests.labels(verb, resource).inc()

    def add_waiting(self, pool: str, delta: int) -> None:
        """An acquirer of `pool` starts (+1) or stops (-1) waiting for a slot."""
        with self._lock:
            self._waiting[pool] = self._waiting.get(pool, 0) + delta

    def waiting_now(self, pool: str) -> int:
        with self._lock:
            return self._waiting.get(pool, 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector:
    """Slot gauges and the autoscaling signal, read from the Leases at scrape time."""

    def __init__(self, metrics: SchedulerMetrics):
        self.metrics = metrics

    def describe(self):
        return []  # names are only known at collect time; nothing to check for duplicates

    def collect(self):
        up = GaugeMetricFamily(
            "warmbuild_pool_up", "1 if the pool's pods and Leases could be read for this scrape", labels=["pool"]
        )
        slots = GaugeMetricFamily("warmbuild_pool_slots", "Slots of each builder", labels=["pool", "builder"])
        in_use = GaugeMetricFamily(
            "warmbuild_pool_slots_in_use", "Held (unexpired) slot Leases of each builder", labels=["pool", "builder"]
        )
        per_builder = GaugeMetricFamily(
            "warmbuild_pool_slots_per_builder", "Slots per ready builder (mean)", labels=["pool"]
        )
        waiting = GaugeMetricFamily(
            "warmbuild_pool_waiting_acquirers", "Acquire requests waiting on this replica", labels=["pool"]
        )
        desired = GaugeMetricFamily(
            "warmbuild_pool_desired_builders",
            "ceil((slots in use + waiting acquirers on this replica) / slots per builder): scale builders on this",
            labels=["pool"],
        )
        unhealthy = GaugeMetricFamily(
            "warmbuild_pool_builder_unhealthy",
            "1 while a builder is out of the rotation after an infrastructure failure (its cool-down), else 0",
            labels=["pool", "builder"],
        )
        for pool in self.metrics.pools:
            queued = self.metrics.waiting_now(pool)
            waiting.add_metric([pool], queued)
            try:
                status = self.metrics.read_status(pool)
            except WarmbuildError:
                up.add_metric([pool], 0)
                continue
            up.add_metric([pool], 1)
            for builder in status.builders:
                slots.add_metric([pool, builder.name], len(builder.slots))
                in_use.add_metric([pool, builder.name], builder.in_use)
                unhealthy.add_metric([pool, builder.name], 1 if builder.unhealthy else 0)
            per = slots_per_builder(status)
            per_builder.add_metric([pool], per)
            desired.add_metric([pool], desired_builders(sum(b.in_use for b in status.builders), queued, per))
        yield from (up, slots, in_use, per_builder, waiting, desired, unhealthy)
