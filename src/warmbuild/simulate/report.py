"""Numbers and pictures from simulation runs: per-policy metrics, Markdown tables, PNG charts.

Charts need matplotlib (`pip install 'warmbuild[plan]'`); it is imported only when a chart is
drawn, with the Agg backend, so the simulator itself runs without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from ..errors import ToolMissing
from .model import PolicyMetrics, PolicyRun

PATHS = ("warm", "spill", "ephemeral", "pool", "dedicated", "none")


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def policy_metrics(run: PolicyRun) -> PolicyMetrics:
    outcomes = run.outcomes
    ran = [o for o in outcomes if o.status == "success"]
    queue = [o.queue_seconds for o in ran]
    total = [o.total_seconds for o in ran]
    slot_seconds = sum(b.slots * b.up_seconds for b in run.builders)
    busy = sum(b.busy_slot_seconds for b in run.builders)
    shares = {}
    for path in PATHS:
        count = sum(1 for o in outcomes if o.path == path)
        if count:
            shares[path] = count / len(outcomes)
    return PolicyMetrics(
        policy=run.policy,
        builds=len(outcomes),
        succeeded=len(ran),
        failed=sum(1 for o in outcomes if o.status == "failed"),
        aborted=sum(1 for o in outcomes if o.status == "aborted"),
        affine_hit_rate=sum(1 for o in ran if o.warm_cache) / len(ran) if ran else 0.0,
        queue_p50=quantile(queue, 0.5),
        queue_p95=quantile(queue, 0.95),
        total_p50=quantile(total, 0.5),
        total_p95=quantile(total, 0.95),
        build_p50=quantile([o.build_seconds for o in ran], 0.5),
        utilisation=busy / slot_seconds if slot_seconds else 0.0,
        builder_hours=sum(b.up_seconds for b in run.builders) / 3600.0,
        ephemeral_hours=run.ephemeral_seconds / 3600.0,
        path_shares=shares,
    )


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 100:
        return f"{value:.0f} s"
    return f"{value:.1f} s"


def _paths(shares: dict[str, float]) -> str:
    return " · ".join(f"{path} {share:.0%}" for path, share in shares.items() if share >= 0.0005) or "-"


def metrics_table(metrics: Iterable[PolicyMetrics]) -> str:
    """The comparison as a Markdown table, one row per policy."""
    rows = [
        "| policy | builds | affine-hit | queue p50 | queue p95 | build time p50 | build time p95 | utilisation | builder-hours (+ ephemeral) | paths |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in metrics:
        notes = []
        if m.failed:
            notes.append(f"{m.failed} failed")
        if m.aborted:
            notes.append(f"{m.aborted} aborted")
        builds = f"{m.builds}" + (f" ({', '.join(notes)})" if notes else "")
        hours = f"{m.builder_hours:.0f}" + (f" + {m.ephemeral_hours:.1f}" if m.ephemeral_hours else "")
        rows.append(
            f"| {m.policy} | {builds} | {m.affine_hit_rate:.1%} | {_seconds(m.queue_p50)} | {_seconds(m.queue_p95)} | "
            f"{_seconds(m.total_p50)} | {_seconds(m.total_p95)} | {m.utilisation:.1%} | {hours} | {_paths(m.path_shares)} |"
        )
    return "\n".join(rows) + "\n"


def metrics_json(metrics: Iterable[PolicyMetrics]) -> list[dict]:
    out = []
    for m in metrics:
        data = asdict(m)
        data["all_builder_hours"] = m.all_builder_hours
        out.append(data)
    return out


def write_outcomes(run: PolicyRun, path: Path) -> None:
    """Every simulated build, one JSON object a line (for your own analysis)."""
    with path.open("w") as handle:
        for outcome in run.outcomes:
            handle.write(json.dumps(asdict(outcome), separators=(",", ":")) + "\n")


# --- charts -----------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ToolMissing("charts need matplotlib: pip install 'warmbuild[plan]' (or pass --no-charts)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLOURS = {"warmbuild": "#1b7837", "sticky": "#2166ac", "random": "#b2182b", "dedicated": "#e08214"}


def comparison_charts(
    runs: Sequence[PolicyRun], metrics: Sequence[PolicyMetrics], directory: Path, prefix: str = "simulate"
) -> list[Path]:
    """Three PNGs: percentiles per policy, the distribution of build times, and the day's course."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    colours = [COLOURS.get(m.policy, "#555555") for m in metrics]
    charts = (
        ("policies", _policies_chart(plt, metrics, colours)),
        ("cdf", _cdf_chart(plt, runs, colours)),
        ("over-time", _over_time_chart(plt, runs, colours)),
    )
    written = []
    for name, fig in charts:
        fig.tight_layout()
        path = directory / f"{prefix}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _policies_chart(plt, metrics: Sequence[PolicyMetrics], colours: list[str]):
    names = [m.policy for m in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    bars = [
        ("queue wait (s)", [(m.queue_p50, m.queue_p95) for m in metrics]),
        ("end-to-end build time (s)", [(m.total_p50, m.total_p95) for m in metrics]),
    ]
    for ax, (title, values) in zip(axes[:2], bars):
        x = range(len(names))
        for offset, which, alpha in ((-0.2, 0, 0.55), (0.2, 1, 1.0)):
            heights = [v[which] for v in values]
            ax.bar([i + offset for i in x], heights, width=0.4, color=colours, alpha=alpha)
            for i, h in zip(x, heights):
                ax.text(i + offset, h, _seconds(h), ha="center", va="bottom", fontsize=7)
        positive = [h for v in values for h in v if h > 0]
        if positive and max(positive) > 20 * min(positive):
            ax.set_yscale("symlog", linthresh=1.0)  # hours next to seconds: keep both readable
            title += ", log"
        ax.set_xticks(list(x), names)
        ax.set_title(title + "  (light p50, dark p95)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[2]
    ax.bar(names, [m.affine_hit_rate * 100 for m in metrics], color=colours)
    for i, m in enumerate(metrics):
        ax.text(i, m.affine_hit_rate * 100 + 1, f"{m.all_builder_hours:.0f} bh", ha="center", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_title("affine-hit rate (%), builder-hours on top", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _cdf_chart(plt, runs: Sequence[PolicyRun], colours: list[str]):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, colour in zip(runs, colours):
        totals = sorted(o.total_seconds for o in run.outcomes if o.status == "success")
        if not totals:
            continue
        ax.plot(totals, [(i + 1) / len(totals) for i in range(len(totals))], color=colour, label=run.policy)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end build time (s, log scale)")
    ax.set_ylabel("share of builds")
    ax.set_title("distribution of end-to-end build time")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _over_time_chart(plt, runs: Sequence[PolicyRun], colours: list[str]):
    fig, ax = plt.subplots(figsize=(9, 4.5))
    horizon = max((o.arrived for run in runs for o in run.outcomes), default=0.0) or 1.0  # by arrival time
    bucket = 3600.0 if horizon > 6 * 3600 else max(60.0, horizon / 24)
    buckets = int(horizon // bucket) + 1
    arrivals = [0] * buckets
    peaks: list[float] = []
    for run, colour in zip(runs, colours):
        per: list[list[float]] = [[] for _ in range(buckets)]
        for o in run.outcomes:
            if o.status == "success":
                per[min(buckets - 1, int(o.arrived // bucket))].append(o.total_seconds)
        xs = [i * bucket / 3600 for i in range(buckets) if per[i]]
        ys = [quantile(p, 0.95) for p in per if p]
        peaks.extend(ys)
        ax.plot(xs, ys, color=colour, label=f"{run.policy} p95")
    seen: set[int] = set()
    for o in runs[0].outcomes:
        if o.arrival not in seen:  # a retried build arrives once
            seen.add(o.arrival)
            arrivals[min(buckets - 1, int(o.arrived // bucket))] += 1
    twin = ax.twinx()
    twin.bar(
        [i * bucket / 3600 for i in range(buckets)],
        arrivals,
        width=bucket / 3600 * 0.9,
        color="#999999",
        alpha=0.25,
        align="edge",
    )
    twin.set_ylabel(f"builds arriving per {bucket / 60:.0f} min (grey)")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlabel("hours into the simulated period (by arrival)")
    ax.set_ylabel("p95 end-to-end build time (s)")
    positive = [p for p in peaks if p > 0]
    if positive and max(positive) > 20 * min(positive):
        ax.set_yscale("log")
        ax.set_ylabel("p95 end-to-end build time (s, log scale)")
    ax.set_title("p95 build time over the day, by policy")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig
