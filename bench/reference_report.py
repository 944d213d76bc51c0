"""Results of bench/run: CSV, Markdown table, targets, pip vs uv, PNG chart, docs/benchmarks.md.

Pure reporting: takes the rows bench/reference_scenarios.py measured and writes
bench/results/reference-<mode>.csv and .png, and the generated section of docs/benchmarks.md
(between `<!-- bench/run MODE: begin -->` and `<!-- bench/run MODE: end -->`).
"""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"

SCENARIO_TITLES = {"cold": "cold", "code": "code change", "deps": "dependency change"}
STRATEGY_TITLES = {
    "standard": "standard CI (fresh buildkitd + registry cache)",
    "warm": "warmbuild warm",
    "ephemeral": "warmbuild ephemeral",
    "raw": "raw buildctl (warm builder)",
    "warm-uv": "warmbuild warm --uv",
    "warm-uv-zstd": "warmbuild warm --uv --compression zstd",
}
SHORT_TITLES = {
    "standard": "standard CI",
    "warm": "warm",
    "ephemeral": "ephemeral",
    "raw": "raw buildctl",
    "warm-uv": "warm --uv",
    "warm-uv-zstd": "warm --uv zstd",
}
STRATEGY_ORDER = ("standard", "ephemeral", "warm", "raw", "warm-uv", "warm-uv-zstd")
COLORS = {
    "standard": "#9e9e9e",
    "ephemeral": "#f4a261",
    "warm": "#2a9d8f",
    "raw": "#264653",
    "warm-uv": "#8ab17d",
    "warm-uv-zstd": "#e9c46a",
}

TARGET_CODE_SPEEDUP = 15.0
TARGET_DEPS_SPEEDUP = 3.0
TARGET_OVERHEAD_SECONDS = 0.5
TARGET_OVERHEAD_PERCENT = 5.0
UV_REFERENCE_CLAIM = "~40 % less build time"

CSV_FIELDS = [
    "run_id",
    "mode",
    "commit",
    "scenario",
    "strategy",
    "rep",
    "seconds",
    "startup_seconds",
    "queue_seconds",
    "push_seconds",
    "install_cached",
    "install_seconds",
    "cached_steps",
    "total_steps",
    "reported_seconds",
    "path",
    "builder",
    "tag",
    "digest",
    "started_at",
    "note",
]


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    mode: str
    repeat: int
    command: str
    commit: str
    started_at: str
    wall_seconds: float
    load_at_start: float
    cpus: int
    affine_builder: str
    requirements: str
    bump: str
    partial: bool = False  # a subset of the scenarios (development): own file names, docs untouched

    @property
    def stem(self) -> str:
        return f"reference-{self.mode}" + ("-partial" if self.partial else "")


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    runs: int

    def cell(self) -> str:
        if self.runs == 1:
            return f"{self.median:.1f}"
        return f"{self.median:.1f} ({self.low:.1f}–{self.high:.1f})"


def summarize(rows: list[dict]) -> dict[tuple[str, str], Summary]:
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["strategy"]), []).append(float(row["seconds"]))
    return {key: Summary(statistics.median(v), min(v), max(v), len(v)) for key, v in groups.items()}


def ratio(stats, scenario: str, numerator: str, denominator: str) -> float | None:
    a, b = stats.get((scenario, numerator)), stats.get((scenario, denominator))
    if a is None or b is None or b.median <= 0:
        return None
    return a.median / b.median


def overhead(stats, scenario: str) -> tuple[float, float] | None:
    warm, raw = stats.get((scenario, "warm")), stats.get((scenario, "raw"))
    if warm is None or raw is None or raw.median <= 0:
        return None
    seconds = warm.median - raw.median
    return seconds, 100 * seconds / raw.median


def overhead_outside_install(rows: list[dict], scenario: str) -> float | None:
    """Median warm − median raw of the time outside the install step: the same overhead without the
    install's download-speed noise, which on a full install is larger than the overhead itself."""

    def outside(strategy: str) -> list[float]:
        return [
            float(r["seconds"]) - float(r["install_seconds"] or 0)
            for r in rows
            if r["scenario"] == scenario and r["strategy"] == strategy
        ]

    warm, raw = outside("warm"), outside("raw")
    return statistics.median(warm) - statistics.median(raw) if warm and raw else None


def scenarios_of(rows: list[dict]) -> list[str]:
    seen = {r["scenario"] for r in rows}
    return [s for s in SCENARIO_TITLES if s in seen]


def markdown_table(stats, scenarios: list[str], repeat: int) -> str:
    unit = "s, median (min–max)" if repeat > 1 else "s"
    head = [
        "scenario",
        *(f"{SHORT_TITLES[s]} {unit}" for s in STRATEGY_ORDER),
        "standard/warm",
        "ephemeral/warm",
        "warm − raw",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for scenario in scenarios:
        cells = [SCENARIO_TITLES[scenario]]
        for strategy in STRATEGY_ORDER:
            summary = stats.get((scenario, strategy))
            cells.append(summary.cell() if summary else "–")
        for numerator in ("standard", "ephemeral"):
            value = ratio(stats, scenario, numerator, "warm")
            cells.append(f"{value:.1f}x" if value is not None else "–")
        over = overhead(stats, scenario)
        cells.append(f"{over[0]:+.2f} s ({over[1]:+.1f} %)" if over else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(stats, scenarios: list[str], rows: list[dict]) -> list[str]:
    lines = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    for scenario, target in (("code", TARGET_CODE_SPEEDUP), ("deps", TARGET_DEPS_SPEEDUP)):
        if scenario not in scenarios:
            continue
        value = ratio(stats, scenario, "standard", "warm")
        if value is None:
            continue
        lines.append(
            f"{verdict(value >= target)} {SCENARIO_TITLES[scenario]}: standard CI / warm = {value:.1f}x "
            f"(target ≥ {target:g}x)"
        )
    for scenario in scenarios:
        over = overhead(stats, scenario)
        if over is None:
            continue
        seconds, percent = over
        ok = seconds <= TARGET_OVERHEAD_SECONDS and percent <= TARGET_OVERHEAD_PERCENT
        raw = stats[(scenario, "raw")]
        spread = f"; raw buildctl spread {raw.high - raw.low:.1f} s over {raw.runs} runs" if raw.runs > 1 else ""
        lines.append(
            f"{verdict(ok)} warmbuild overhead over raw buildctl, {SCENARIO_TITLES[scenario]}: "
            f"{seconds:+.2f} s, {percent:+.1f} % (target ≤ {TARGET_OVERHEAD_SECONDS:g} s and ≤ {TARGET_OVERHEAD_PERCENT:g} %{spread})"
        )
    for scenario in scenarios:
        outside = overhead_outside_install(rows, scenario) if scenario != "code" else None
        if outside is not None:
            lines.append(
                f"info: the same overhead outside the install step, {SCENARIO_TITLES[scenario]}: {outside:+.2f} s "
                "(the install's download time varies more than the overhead)"
            )
    return lines


def uv_lines(stats, scenarios: list[str]) -> list[str]:
    lines = []
    for scenario in ("cold", "deps"):
        pip, uv = stats.get((scenario, "warm")), stats.get((scenario, "warm-uv"))
        if scenario not in scenarios or pip is None or uv is None:
            continue
        change = 100 * (uv.median - pip.median) / pip.median
        lines.append(
            f"pip vs uv, {SCENARIO_TITLES[scenario]} (warm builder): pip {pip.median:.1f} s, --uv {uv.median:.1f} s "
            f"({change:+.0f} %; reference claim: {UV_REFERENCE_CLAIM})"
        )
    for scenario in ("cold", "deps"):
        gzip, zstd = stats.get((scenario, "warm-uv")), stats.get((scenario, "warm-uv-zstd"))
        if scenario in scenarios and gzip is not None and zstd is not None:
            change = 100 * (zstd.median - gzip.median) / gzip.median
            lines.append(
                f"gzip vs zstd, {SCENARIO_TITLES[scenario]} (warm --uv): gzip {gzip.median:.1f} s, "
                f"--compression zstd {zstd.median:.1f} s ({change:+.0f} %)"
            )
    for strategy in ("warm-uv", "warm-uv-zstd"):
        value = ratio(stats, "deps", "standard", strategy)
        if "deps" in scenarios and value is not None:
            lines.append(
                f"info: dependency change, standard CI (pip, gzip) / {SHORT_TITLES[strategy]} = {value:.1f}x "
                f"(not the target's like-for-like comparison: the Dockerfiles differ)"
            )
    return lines


def write_rows(rows: list[dict], path: Path, commit: str = "") -> Path:
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "commit": commit})
    return path


def write_csv(rows: list[dict], meta: RunInfo) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return write_rows(rows, RESULTS / f"{meta.stem}.csv", meta.commit)


def write_chart(rows: list[dict], stats, meta: RunInfo) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = scenarios_of(rows)
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 4.2), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        present = [s for s in STRATEGY_ORDER if (scenario, s) in stats]
        medians = [stats[(scenario, s)].median for s in present]
        low = [stats[(scenario, s)].median - stats[(scenario, s)].low for s in present]
        high = [stats[(scenario, s)].high - stats[(scenario, s)].median for s in present]
        bars = ax.bar(
            range(len(present)),
            medians,
            color=[COLORS[s] for s in present],
            yerr=[low, high] if meta.repeat > 1 else None,
            capsize=4,
        )
        for bar, value in zip(bars, medians):
            ax.annotate(
                f"{value:.1f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(present)), [SHORT_TITLES[s] for s in present], rotation=30, ha="right", fontsize=8)
        ax.set_title(SCENARIO_TITLES[scenario])
        ax.set_ylabel("seconds (incl. push)")
        ax.margins(y=0.15)
    fig.suptitle(
        f"bench/run {meta.mode}: {meta.repeat} repetition{'s' if meta.repeat > 1 else ''}, "
        f"commit {meta.commit}" + (" — medians, min–max bars" if meta.repeat > 1 else ""),
        fontsize=10,
    )
    fig.tight_layout()
    path = RESULTS / f"{meta.stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def docs_section(meta: RunInfo, table: str, targets: list[str], uv: list[str], csv_path: Path, png_path: Path) -> str:
    minutes, seconds = divmod(round(meta.wall_seconds), 60)
    title = "Quick run" if meta.mode == "quick" else "Full run"
    lines = [
        f"<!-- bench/run {meta.mode}: begin (generated by bench/run; edits here are overwritten) -->",
        f"### {title}",
        "",
        f"Commit `{meta.commit}`, {meta.started_at} UTC; {meta.repeat} repetition{'s' if meta.repeat > 1 else ''}; "
        f"`{meta.requirements}` with the dependency change {meta.bump}; affine builder {meta.affine_builder}; "
        f"{meta.cpus} CPUs, load average {meta.load_at_start:.1f} at the start; the whole run took {minutes} min {seconds} s.",
        "",
        "Reproduce:",
        "",
        "```sh",
        f'eval "$(testbed/up)" && {meta.command}',
        "```",
        "",
        "Seconds from launching the command a CI job runs to its exit, push included"
        + (" — median (min–max)." if meta.repeat > 1 else "."),
        "",
        table,
        "",
        "Targets (not timed tests; medians):",
        "",
        *[f"- {line}" for line in targets],
        "",
        *[f"- {line}" for line in uv],
        "",
        f"![{meta.mode} run: seconds per strategy and scenario](../{png_path.relative_to(ROOT)})",
        "",
        f"Every build: [`{csv_path.relative_to(ROOT)}`](../{csv_path.relative_to(ROOT)}).",
        f"<!-- bench/run {meta.mode}: end -->",
    ]
    return "\n".join(lines)


def update_docs(section: str, mode: str) -> Path:
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench/run {mode}: begin.*?<!-- bench/run {mode}: end -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS.write_text(text)
    return DOCS


def publish(rows: list[dict], meta: RunInfo, write_docs: bool = True) -> int:
    stats = summarize(rows)
    scenarios = scenarios_of(rows)
    table = markdown_table(stats, scenarios, meta.repeat)
    targets = target_lines(stats, scenarios, rows)
    uv = uv_lines(stats, scenarios)
    csv_path = write_csv(rows, meta)
    png_path = write_chart(rows, stats, meta)
    written = [csv_path, png_path]
    if write_docs:
        written.append(update_docs(docs_section(meta, table, targets, uv, csv_path, png_path), meta.mode))
    minutes, seconds = divmod(round(meta.wall_seconds), 60)
    print(
        f"\nbench/run {meta.mode}: commit {meta.commit}, {meta.repeat} repetition(s), wall time {minutes} min {seconds} s\n"
    )
    print(table)
    print("\ntargets (not timed tests; medians):")
    for line in targets:
        print(f"  {line}")
    for line in uv:
        print(line)
    notes = [r for r in rows if r.get("note")]
    for row in notes:
        print(f"note: {row['scenario']}/{row['strategy']} repetition {row['rep']}: {row['note']}")
    print("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    speedup = ratio(stats, "code", "standard", "warm")
    print(
        f"code-change speedup standard/warm: {speedup:.1f}x"
        if speedup is not None
        else "code-change speedup standard/warm: not measured"
    )
    return 0
