"""Workloads to simulate: synthetic arrivals, or the builds a pool's history recorded.

Synthetic: `keys` workloads with Zipf popularity (rank r is chosen with weight 1/r^s); arrivals
are a Poisson process whose rate follows a daily shape (a cosine peaking at `peak_hour`, scaled so
the day averages `builds_per_day`); a share of changes touch the dependency layers; durations per
key are the given medians times a per-key size factor (log-normal), and each build's duration has
its own log-normal jitter. Everything comes from one seeded `random.Random`.

History: `warmbuild history export` writes `history.BuildRecord`s as JSON Lines (read here with
`history.parse_records`). Each record becomes one arrival at `started - queue_seconds` (records
are written when the build got its slot); per-key durations are learned from the records:
  warm      median build time of warm-path builds whose cache ratio shows a warm cache;
  spill     median of spill-path builds and of warm-path builds that missed the cache
            (a cache ratio well below the key's best): the cold-cache penalty;
  ephemeral median build time of ephemeral builds, and their startup;
and what a key lacks comes from the pool's ratios to warm (or from the policy's priors).
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..pool.policy import PRIOR_EPHEMERAL_STARTUP_SECONDS, PRIOR_WARM_SECONDS
from ..pool.records import BuildRecord, parse_records
from .model import Arrival, KeyProfile, Workload

DAY = 86400.0
COLD_RATIO_GAP = 0.2  # a warm-path build whose cache ratio is this far below its key's best missed the cache
DEFAULT_SPILL_FACTOR = 3.0  # spill / warm when history has no cold build at all


@dataclass(frozen=True)
class SyntheticSpec:
    keys: int = 500
    zipf: float = 1.1
    builds_per_day: float = 5000.0
    days: float = 1.0
    peak_hour: float = 14.0  # UTC hour of the busiest time
    peak_to_mean: float = 1.8  # rate at the peak / the day's mean rate (1 = flat)
    deps_share: float = 0.1  # share of builds whose change touches the dependency layers
    warm_seconds: float = 60.0  # medians over keys
    spill_seconds: float = 180.0
    ephemeral_seconds: float = 200.0
    ephemeral_startup_seconds: float = 30.0
    deps_extra_seconds: float = 240.0
    size_sigma: float = 0.4  # per-key size factor: log-normal sigma
    jitter_sigma: float = 0.2  # per-build duration jitter: log-normal sigma
    seed: int = 1

    def describe(self) -> str:
        return (
            f"synthetic: {self.keys} keys, Zipf s={self.zipf:g}, {self.builds_per_day:g} builds/day for {self.days:g} "
            f"day(s), peak {self.peak_to_mean:g}x mean at {self.peak_hour:g}:00, {self.deps_share:.0%} dependency "
            f"changes, medians warm {self.warm_seconds:g}s / spill {self.spill_seconds:g}s / ephemeral "
            f"{self.ephemeral_startup_seconds:g}+{self.ephemeral_seconds:g}s / +{self.deps_extra_seconds:g}s for deps, seed {self.seed}"
        )


def daily_shape(t: float, spec: SyntheticSpec) -> float:
    """Rate multiplier at time t (seconds; t=0 is midnight): averages 1 over a day."""
    amplitude = max(0.0, min(1.0, spec.peak_to_mean - 1.0))
    hour = (t % DAY) / 3600.0
    return 1.0 + amplitude * math.cos(2.0 * math.pi * (hour - spec.peak_hour) / 24.0)


def synthetic_workload(spec: SyntheticSpec) -> Workload:
    if spec.keys < 1 or spec.builds_per_day <= 0 or spec.days <= 0:
        raise ValueError("a synthetic workload needs at least one key, builds per day > 0 and days > 0")
    rng = random.Random(spec.seed)
    names = [f"k{i:04d}" for i in range(spec.keys)]
    profiles = {}
    for name in names:
        size = math.exp(rng.gauss(0.0, spec.size_sigma))
        profiles[name] = KeyProfile(
            key=name,
            warm_seconds=spec.warm_seconds * size,
            spill_seconds=spec.spill_seconds * size,
            ephemeral_seconds=spec.ephemeral_seconds * size,
            ephemeral_startup_seconds=spec.ephemeral_startup_seconds,
            deps_extra_seconds=spec.deps_extra_seconds * size,
        )
    cumulative = []
    total = 0.0
    for rank in range(1, spec.keys + 1):
        total += 1.0 / rank**spec.zipf
        cumulative.append(total)
    order = names[:]
    rng.shuffle(order)  # popularity rank is not the name order
    mean_rate = spec.builds_per_day / DAY
    peak = mean_rate * (1.0 + max(0.0, min(1.0, spec.peak_to_mean - 1.0)))
    end = spec.days * DAY
    arrivals = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            break
        if rng.random() * peak > mean_rate * daily_shape(t, spec):
            continue  # thinning: a Poisson process with the daily rate
        key = order[bisect.bisect_left(cumulative, rng.random() * total)]
        change = "deps" if rng.random() < spec.deps_share else "code"
        jitter = math.exp(rng.gauss(0.0, spec.jitter_sigma)) if spec.jitter_sigma > 0 else 1.0
        arrivals.append(Arrival(index=len(arrivals), time=t, key=key, change=change, jitter=jitter))
    return Workload(arrivals=tuple(arrivals), profiles=profiles, description=spec.describe(), period_seconds=end)


def read_history_file(path: str | Path) -> tuple[BuildRecord, ...]:
    return parse_records(Path(path).read_text())


def _median(values) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def cache_classes(records) -> list[str | None]:
    """For each record: `warm` (a warm cache), `cold` (a warm builder without it), `ephemeral`,
    or None (not a successful build)."""
    best_ratio: dict[str, float] = {}
    for r in records:
        if r.status == "success" and r.path == "warm":
            best_ratio[r.key] = max(best_ratio.get(r.key, 0.0), r.cache_ratio)
    classes: list[str | None] = []
    for r in records:
        if r.status != "success":
            classes.append(None)
        elif r.path == "warm" and r.cache_ratio >= best_ratio[r.key] - COLD_RATIO_GAP:
            classes.append("warm")
        elif r.path in ("warm", "spill"):
            classes.append("cold")
        elif r.path == "ephemeral":
            classes.append("ephemeral")
        else:
            classes.append(None)
    return classes


def learn_profiles(records: tuple[BuildRecord, ...] | list[BuildRecord]) -> dict[str, KeyProfile]:
    """Per-key warm / spill / ephemeral durations from successful builds (see the module doc)."""
    keys = list(dict.fromkeys(r.key for r in records))
    measured: dict[str, dict[str, list[float]]] = {c: {k: [] for k in keys} for c in ("warm", "cold", "ephemeral")}
    for r, cls in zip(records, cache_classes(records)):
        if cls is not None:
            measured[cls][r.key].append(r.build_seconds)
    warm, cold, eph = measured["warm"], measured["cold"], measured["ephemeral"]
    startups = [r.startup_seconds for r in records if r.status == "success" and r.path == "ephemeral"]

    def factor(measured: dict[str, list[float]], fallback: float) -> float:
        per_key = [_median(measured[k]) / _median(warm[k]) for k in keys if measured[k] and warm[k]]
        if per_key:
            return _median(per_key)
        pool, pool_warm = _median(x for k in keys for x in measured[k]), _median(x for k in keys for x in warm[k])
        return pool / pool_warm if pool and pool_warm else fallback

    cold_factor = max(1.0, factor(cold, DEFAULT_SPILL_FACTOR))
    eph_factor = factor(eph, cold_factor)  # nothing measured: an ephemeral build imports like a spill
    pool_warm = _median(x for k in keys for x in warm[k])
    startup = _median(startups) or PRIOR_EPHEMERAL_STARTUP_SECONDS
    profiles = {}
    for k in keys:
        w, c, e = _median(warm[k]), _median(cold[k]), _median(eph[k])
        if w is None:
            w = (
                c / cold_factor
                if c is not None
                else (e / eph_factor if e is not None else (pool_warm or PRIOR_WARM_SECONDS))
            )
        profiles[k] = KeyProfile(
            key=k,
            warm_seconds=w,
            spill_seconds=max(w, c if c is not None else w * cold_factor),
            ephemeral_seconds=e if e is not None else w * eph_factor,
            ephemeral_startup_seconds=startup,
        )
    return profiles


def workload_from_history(
    records: tuple[BuildRecord, ...] | list[BuildRecord],
    route_keys: dict[str, str] | None = None,
    jitter: bool = False,
) -> Workload:
    """Replay `records` as arrivals, with per-key durations learned from them.

    `route_keys` maps key hashes to the workload keys they stand for, when known, so the simulated
    pool routes exactly as the real one did. With `jitter`, each arrival keeps its own build's
    deviation from its key's median on the path it took.
    """
    records = [r for r in records if r.status in ("success", "failed")]
    if not records:
        raise ValueError("the history holds no builds")
    profiles = learn_profiles(records)
    starts = [r.started - r.queue_seconds for r in records]
    origin = min(starts)
    order = sorted(range(len(records)), key=lambda i: (starts[i], i))
    classes = cache_classes(records)
    arrivals = []
    for index, i in enumerate(order):
        r = records[i]
        factor = 1.0
        if jitter and classes[i] is not None:
            p = profiles[r.key]
            typical = {"warm": p.warm_seconds, "cold": p.spill_seconds, "ephemeral": p.ephemeral_seconds}[classes[i]]
            factor = max(0.2, min(5.0, r.build_seconds / typical))
        arrivals.append(Arrival(index=index, time=starts[i] - origin, key=r.key, change="code", jitter=factor))
    warm_builders = tuple(sorted({r.builder for r in records if r.path in ("warm", "spill") and r.builder}))
    queues = [r.queue_seconds for r in records if r.path == "warm"]
    acquire = _quantile(queues, 0.25) if queues else None
    description = (
        f"history: {len(records)} builds of {len(profiles)} workload keys over {(max(starts) - origin) / 3600:.1f} h"
    )
    return Workload(
        arrivals=tuple(arrivals),
        profiles=profiles,
        description=description,
        route_keys=dict(route_keys or {}),
        builder_names=warm_builders,
        start_epoch=origin,
        acquire_seconds=acquire,
        period_seconds=max(starts) - origin,
    )
