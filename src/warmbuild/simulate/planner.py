"""Capacity planning: the smallest pool (builders × slots) whose simulated p95 meets a target.

For each slots-per-builder option, builder counts are tried on a doubling ladder (1, 2, 4, …) until
one meets the target, then bisected down to the smallest that does; every pool tried is a point of
the curve. The p95 falls as builders are added (more slots, more cache), but not strictly — hashing
can place two hot keys together — so the answer is the smallest count found by the bisection, and
the curve shows the neighbourhood. Of the options, the smallest total slots (builders × slots)
wins, then the fewer builders. Scale events are not applied: each point is a fixed pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .model import PolicyMetrics, SimulationConfig, Workload
from .report import _pyplot, policy_metrics
from .runs import run_policy

METRICS = ("total", "queue")


@dataclass(frozen=True)
class PlanPoint:
    builders: int
    slots: int
    p95: float  # of the planned metric
    meets: bool
    metrics: PolicyMetrics

    @property
    def total_slots(self) -> int:
        return self.builders * self.slots


@dataclass(frozen=True)
class PlanResult:
    target_seconds: float
    metric: str  # total (end-to-end build time) | queue (queue wait)
    policy: str
    points: tuple[PlanPoint, ...]  # in the order tried
    best: PlanPoint | None
    by_slots: dict[int, PlanPoint | None]  # the smallest pool meeting the target per slots option
    max_builders: int


def _p95(metrics: PolicyMetrics, metric: str) -> float:
    return metrics.total_p95 if metric == "total" else metrics.queue_p95


def plan_pool(
    workload: Workload,
    target_seconds: float,
    *,
    metric: str = "total",
    slots_options: Sequence[int] = (1, 2, 4),
    max_builders: int = 200,
    config: SimulationConfig = SimulationConfig(),
    policy: str = "warmbuild",
    progress: Callable[[PlanPoint], None] = lambda _point: None,
) -> PlanResult:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    if target_seconds <= 0 or max_builders < 1 or not slots_options or min(slots_options) < 1:
        raise ValueError("the target must be positive, max builders at least 1, slots options at least 1")
    points: list[PlanPoint] = []
    seen: dict[tuple[int, int], PlanPoint] = {}

    def evaluate(builders: int, slots: int) -> PlanPoint:
        if (builders, slots) in seen:
            return seen[(builders, slots)]
        fleet = replace(config.fleet, builders=builders, slots=slots, scale_events=())
        metrics = policy_metrics(run_policy(workload, policy, replace(config, fleet=fleet)))
        p95 = _p95(metrics, metric)
        point = PlanPoint(builders, slots, p95, p95 <= target_seconds and metrics.failed == 0, metrics)
        seen[(builders, slots)] = point
        points.append(point)
        progress(point)
        return point

    by_slots: dict[int, PlanPoint | None] = {}
    for slots in sorted(set(slots_options)):
        low, high = 0, None  # low: most builders known to miss; high: fewest known to meet
        builders = 1
        while True:
            if evaluate(builders, slots).meets:
                high = builders
                break
            low = builders
            if builders >= max_builders:
                break
            builders = min(max_builders, builders * 2)
        if high is None:
            by_slots[slots] = None
            continue
        while high - low > 1:
            middle = (low + high) // 2
            if evaluate(middle, slots).meets:
                high = middle
            else:
                low = middle
        by_slots[slots] = seen[(high, slots)]
    found = [p for p in by_slots.values() if p is not None]
    best = min(found, key=lambda p: (p.total_slots, p.builders)) if found else None
    return PlanResult(target_seconds, metric, policy, tuple(points), best, by_slots, max_builders)


def plan_table(result: PlanResult) -> str:
    label = "build time p95" if result.metric == "total" else "queue p95"
    rows = [
        f"| builders | slots | total slots | {label} | meets ≤ {result.target_seconds:g} s | affine-hit | queue p95 | utilisation | builder-hours (+ ephemeral) |",
        "|---:|---:|---:|---:|:---:|---:|---:|---:|---:|",
    ]
    for p in sorted(result.points, key=lambda p: (p.slots, p.builders)):
        m = p.metrics
        mark = "yes" if p.meets else "no"
        if result.best is not None and (p.builders, p.slots) == (result.best.builders, result.best.slots):
            mark = "**yes: smallest**"
        hours = f"{m.builder_hours:.0f}" + (f" + {m.ephemeral_hours:.1f}" if m.ephemeral_hours else "")
        rows.append(
            f"| {p.builders} | {p.slots} | {p.total_slots} | {p.p95:.0f} s | {mark} | {m.affine_hit_rate:.1%} | "
            f"{m.queue_p95:.0f} s | {m.utilisation:.1%} | {hours} |"
        )
    return "\n".join(rows) + "\n"


def plan_summary(result: PlanResult) -> str:
    what = "end-to-end build time" if result.metric == "total" else "queue wait"
    if result.best is None:
        return (
            f"no pool of up to {result.max_builders} builders meets p95 {what} ≤ {result.target_seconds:g} s "
            f"with the {result.policy} policy; raise --max-builders or relax the target"
        )
    b = result.best
    others = "; ".join(
        f"{slots} slot(s): {p.builders} builders" if p else f"{slots} slot(s): none up to {result.max_builders}"
        for slots, p in sorted(result.by_slots.items())
    )
    return (
        f"smallest pool meeting p95 {what} ≤ {result.target_seconds:g} s: {b.builders} builders × {b.slots} slots "
        f"({b.total_slots} slots; p95 {b.p95:.0f} s, affine-hit {b.metrics.affine_hit_rate:.1%}, "
        f"{b.metrics.builder_hours:.0f} builder-hours). Per option: {others}"
    )


def plan_chart(result: PlanResult, path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for slots in sorted(result.by_slots):
        points = sorted((p for p in result.points if p.slots == slots), key=lambda p: p.builders)
        ax.plot([p.builders for p in points], [p.p95 for p in points], marker="o", label=f"{slots} slot(s) per builder")
    ax.axhline(result.target_seconds, color="#b2182b", linestyle="--", label=f"target {result.target_seconds:g} s")
    if result.best is not None:
        ax.plot(
            [result.best.builders],
            [result.best.p95],
            marker="*",
            markersize=16,
            color="#1b7837",
            linestyle="none",
            label=f"smallest: {result.best.builders} × {result.best.slots}",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log" if all(p.p95 > 0 for p in result.points) else "linear")
    ax.set_xlabel("builders (log scale)")
    ax.set_ylabel(("p95 end-to-end build time" if result.metric == "total" else "p95 queue wait") + " (s, log scale)")
    ax.set_title(f"pools tried by warmbuild plan ({result.policy} policy)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
