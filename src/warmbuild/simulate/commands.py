"""`warmbuild simulate`, `warmbuild plan`: arguments and wiring (`history export`, which reads the
cluster, is `pool.history`'s).

`warmbuild.cli` adds these subcommands with `add_commands` and runs them with `run_command`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..errors import InputError
from ..pool.policy import FALLBACKS
from .model import POLICIES, DedicatedOptions, FleetConfig, ScaleEvent, SimulationConfig, WarmbuildOptions, Workload
from .workload import SyntheticSpec, read_history_file, synthetic_workload, workload_from_history

COMMANDS = ("simulate", "plan")
_SYNTHETIC_DEFAULTS = SyntheticSpec()
_FLEET_DEFAULTS = FleetConfig()
_WARMBUILD_DEFAULTS = WarmbuildOptions()
_DEDICATED_DEFAULTS = DedicatedOptions()


def add_commands(sub) -> None:
    simulate = sub.add_parser(
        "simulate",
        help="simulate a build fleet under several routing policies",
        description="Discrete-event simulation of a build fleet: the same arrivals under each policy.",
    )
    _add_workload_arguments(simulate)
    _add_fleet_arguments(simulate)
    simulate.add_argument(
        "--policies", default=",".join(POLICIES), help=f"comma-separated, from {', '.join(POLICIES)} (default: all)"
    )
    simulate.add_argument(
        "--builders", type=int, default=_FLEET_DEFAULTS.builders, help="warm builders in the pool (default 10)"
    )
    simulate.add_argument("--slots", type=int, default=_FLEET_DEFAULTS.slots, help="slots per builder (default 2)")
    simulate.add_argument(
        "--scale",
        action="append",
        default=[],
        metavar="TIME:ACTION:COUNT",
        help="pool change, e.g. 8h:join:4, 20h:drain:4, 30m:crash:1 (TIME in s, or with m/h/d); repeatable",
    )
    _add_output_arguments(simulate)

    plan = sub.add_parser(
        "plan",
        help="the smallest pool (builders × slots) that meets a p95 target",
        description="Search pool sizes with the simulator for the smallest that meets a p95 target.",
    )
    _add_workload_arguments(plan)
    _add_fleet_arguments(plan)
    plan.add_argument("--p95-seconds", type=float, required=True, help="target for the p95 of --metric, in seconds")
    plan.add_argument(
        "--metric",
        choices=("total", "queue"),
        default="total",
        help="total: end-to-end build time (queue + startup + build; default); queue: queue wait",
    )
    plan.add_argument(
        "--slots", default="1,2,4", help="slots-per-builder options to search, comma-separated (default 1,2,4)"
    )
    plan.add_argument("--max-builders", type=int, default=200, help="largest pool to try (default 200)")
    plan.add_argument("--policy", choices=POLICIES, default="warmbuild", help="routing policy (default warmbuild)")
    _add_output_arguments(plan)


def _add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload: a history file, or a synthetic one")
    d = _SYNTHETIC_DEFAULTS
    group.add_argument(
        "--history", help="JSON Lines from 'warmbuild history export': replay its builds, learn their durations"
    )
    group.add_argument("--keys", type=int, default=d.keys, help=f"synthetic: workload keys (default {d.keys})")
    group.add_argument(
        "--zipf", type=float, default=d.zipf, help=f"synthetic: Zipf exponent of key popularity (default {d.zipf:g})"
    )
    group.add_argument(
        "--builds-per-day",
        type=float,
        default=d.builds_per_day,
        help=f"synthetic: mean arrival rate (default {d.builds_per_day:g})",
    )
    group.add_argument("--days", type=float, default=d.days, help=f"synthetic: simulated days (default {d.days:g})")
    group.add_argument(
        "--peak-hour",
        type=float,
        default=d.peak_hour,
        help=f"synthetic: busiest hour of the day (default {d.peak_hour:g})",
    )
    group.add_argument(
        "--peak-to-mean",
        type=float,
        default=d.peak_to_mean,
        help=f"synthetic: peak rate / mean rate, 1-2 (default {d.peak_to_mean:g})",
    )
    group.add_argument(
        "--deps-share",
        type=float,
        default=d.deps_share,
        help=f"synthetic: share of dependency changes (default {d.deps_share:g})",
    )
    group.add_argument(
        "--warm-seconds",
        type=float,
        default=d.warm_seconds,
        help=f"synthetic: median warm build (default {d.warm_seconds:g})",
    )
    group.add_argument(
        "--spill-seconds",
        type=float,
        default=d.spill_seconds,
        help=f"synthetic: median build without the key's cache (default {d.spill_seconds:g})",
    )
    group.add_argument(
        "--ephemeral-seconds",
        type=float,
        default=d.ephemeral_seconds,
        help=f"synthetic: median ephemeral build (default {d.ephemeral_seconds:g})",
    )
    group.add_argument(
        "--ephemeral-startup",
        type=float,
        default=d.ephemeral_startup_seconds,
        help=f"synthetic: ephemeral builder startup (default {d.ephemeral_startup_seconds:g})",
    )
    group.add_argument(
        "--deps-extra-seconds",
        type=float,
        default=d.deps_extra_seconds,
        help=f"synthetic: added by a dependency change (default {d.deps_extra_seconds:g})",
    )
    group.add_argument(
        "--jitter-sigma",
        type=float,
        default=d.jitter_sigma,
        help=f"synthetic: per-build log-normal jitter (default {d.jitter_sigma:g})",
    )
    group.add_argument(
        "--history-jitter",
        action="store_true",
        help="history: each replayed build keeps its own deviation from its key's median",
    )
    group.add_argument(
        "--seed", type=int, default=d.seed, help=f"random seed: the same seed, the same results (default {d.seed})"
    )


def _add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    f, w, d = _FLEET_DEFAULTS, _WARMBUILD_DEFAULTS, _DEDICATED_DEFAULTS
    group = parser.add_argument_group("pool model")
    group.add_argument(
        "--cache-keys",
        type=int,
        default=f.cache_keys,
        help=f"workloads one builder's cache holds, LRU (default {f.cache_keys})",
    )
    group.add_argument(
        "--acquire-seconds",
        type=float,
        default=None,
        help="placement latency (default: measured from --history, else 0.05)",
    )
    group.add_argument(
        "--lease-seconds",
        type=float,
        default=f.lease_seconds,
        help=f"slot lease duration; renewed every third (default {f.lease_seconds:g})",
    )
    group.add_argument(
        "--slot-slowdown",
        type=float,
        default=f.slot_slowdown,
        help="each build already on the builder slows a new one by this share (default 0)",
    )
    group.add_argument(
        "--max-wait",
        type=float,
        default=w.max_wait_seconds,
        help=f"warmbuild: --max-wait (default {w.max_wait_seconds:g})",
    )
    group.add_argument(
        "--fallback", choices=FALLBACKS, default=w.fallback, help=f"warmbuild: --fallback (default {w.fallback})"
    )
    group.add_argument(
        "--idle-timeout",
        type=float,
        default=d.idle_timeout_seconds,
        help=f"dedicated: scale to zero after this idle time (default {d.idle_timeout_seconds:g})",
    )
    group.add_argument(
        "--dedicated-startup",
        type=float,
        default=None,
        help="dedicated: daemon cold start (default: the ephemeral startup)",
    )
    group.add_argument(
        "--dedicated-cold-cache", action="store_true", help="dedicated: the cache is lost when a daemon scales to zero"
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", help="write report.md, metrics.json, per-build JSON Lines and PNG charts here")
    parser.add_argument("--no-charts", action="store_true", help="no PNG charts (no matplotlib needed)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")


def parse_duration(text: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip()
    scale = units.get(text[-1:], None)
    number = text[:-1] if scale else text
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise InputError(f"not a duration: {text!r} (seconds, or a number with s/m/h/d)") from None
    if value < 0:
        raise InputError(f"a duration cannot be negative: {text!r}")
    return value


def parse_scale_event(text: str) -> ScaleEvent:
    parts = text.split(":")
    if len(parts) != 3 or parts[1] not in ("join", "drain", "crash"):
        raise InputError(
            f"--scale {text!r}: expected TIME:ACTION:COUNT with ACTION join, drain or crash, e.g. 8h:join:4"
        )
    try:
        count = int(parts[2])
    except ValueError:
        raise InputError(f"--scale {text!r}: COUNT must be a whole number") from None
    if count < 1:
        raise InputError(f"--scale {text!r}: COUNT must be at least 1")
    return ScaleEvent(time=parse_duration(parts[0]), action=parts[1], count=count)


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{name} must be {'0 or more' if allow_zero else 'more than 0'}")


def load_workload(args: argparse.Namespace) -> Workload:
    if args.history:
        path = Path(args.history)
        if not path.is_file():
            raise InputError(
                f"--history {args.history}: no such file (write one with 'warmbuild history export -o FILE')"
            )
        records = read_history_file(path)
        if not records:
            raise InputError(f"--history {args.history}: no build records in it")
        return workload_from_history(records, jitter=args.history_jitter)
    for name in ("keys", "builds_per_day", "days", "warm_seconds", "spill_seconds", "ephemeral_seconds"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    for name in ("zipf", "ephemeral_startup", "deps_extra_seconds", "jitter_sigma"):
        _positive("--" + name.replace("_", "-"), getattr(args, name), allow_zero=True)
    if not 0 <= args.deps_share <= 1:
        raise InputError("--deps-share must be between 0 and 1")
    if not 1 <= args.peak_to_mean <= 2:
        raise InputError("--peak-to-mean must be between 1 (flat) and 2")
    spec = SyntheticSpec(
        keys=args.keys,
        zipf=args.zipf,
        builds_per_day=args.builds_per_day,
        days=args.days,
        peak_hour=args.peak_hour,
        peak_to_mean=args.peak_to_mean,
        deps_share=args.deps_share,
        warm_seconds=args.warm_seconds,
        spill_seconds=args.spill_seconds,
        ephemeral_seconds=args.ephemeral_seconds,
        ephemeral_startup_seconds=args.ephemeral_startup,
        deps_extra_seconds=args.deps_extra_seconds,
        jitter_sigma=args.jitter_sigma,
        seed=args.seed,
    )
    return synthetic_workload(spec)


def simulation_config(
    args: argparse.Namespace, builders: int, slots: int, scale: tuple[ScaleEvent, ...] = ()
) -> SimulationConfig:
    if builders < 1 or slots < 1 or args.cache_keys < 1:
        raise InputError("--builders, --slots and --cache-keys must be at least 1")
    _positive("--lease-seconds", args.lease_seconds)
    _positive("--max-wait", args.max_wait, allow_zero=True)
    _positive("--idle-timeout", args.idle_timeout, allow_zero=True)
    _positive("--slot-slowdown", args.slot_slowdown, allow_zero=True)
    if args.acquire_seconds is not None:
        _positive("--acquire-seconds", args.acquire_seconds, allow_zero=True)
    return SimulationConfig(
        fleet=FleetConfig(
            builders=builders,
            slots=slots,
            cache_keys=args.cache_keys,
            acquire_seconds=args.acquire_seconds,
            lease_seconds=args.lease_seconds,
            slot_slowdown=args.slot_slowdown,
            scale_events=scale,
        ),
        warmbuild=WarmbuildOptions(max_wait_seconds=args.max_wait, fallback=args.fallback),
        dedicated=DedicatedOptions(
            idle_timeout_seconds=args.idle_timeout,
            startup_seconds=args.dedicated_startup,
            keep_cache=not args.dedicated_cold_cache,
        ),
        seed=args.seed,
    )


def _say(line: str) -> None:
    print(f"warmbuild: {line}", file=sys.stderr, flush=True)


def command_simulate(args: argparse.Namespace) -> int:
    from .report import comparison_charts, metrics_json, metrics_table, policy_metrics, write_outcomes
    from .runs import run_policy

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise InputError(
            f"--policies: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(POLICIES)}"
        )
    config = simulation_config(args, args.builders, args.slots, tuple(parse_scale_event(s) for s in args.scale))
    workload = load_workload(args)
    if not workload.arrivals:
        raise InputError("the workload has no builds: raise --builds-per-day or --days")
    _say(
        f"simulating {len(workload.arrivals)} builds ({workload.description}) on {args.builders} builders × {args.slots} slots"
    )
    runs, metrics = [], []
    for name in policies:
        run = run_policy(workload, name, config)
        runs.append(run)
        metrics.append(policy_metrics(run))
    table = metrics_table(metrics)
    if args.json:
        print(
            json.dumps(
                {"workload": workload.description, "config": asdict(config), "policies": metrics_json(metrics)},
                indent=2,
            )
        )
    else:
        print(table, end="")
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        charts = [] if args.no_charts else comparison_charts(runs, metrics, out)
        (out / "metrics.json").write_text(
            json.dumps(
                {"workload": workload.description, "config": asdict(config), "policies": metrics_json(metrics)},
                indent=2,
            )
            + "\n"
        )
        for run in runs:
            write_outcomes(run, out / f"outcomes-{run.policy}.jsonl")
        report = [
            f"# Simulation\n\nWorkload: {workload.description}.\n",
            f"Pool: {args.builders} builders × {args.slots} slots, cache {args.cache_keys} workloads per builder, "
            f"warmbuild --max-wait {args.max_wait:g} --fallback {args.fallback}, dedicated idle timeout {args.idle_timeout:g} s, "
            f"seed {args.seed}.\n",
            table,
        ]
        report += [f"\n![{c.stem}]({c.name})\n" for c in charts]
        (out / "report.md").write_text("\n".join(report))
        _say(
            f"wrote {out}/report.md, metrics.json, outcomes-*.jsonl"
            + (", " + ", ".join(c.name for c in charts) if charts else "")
        )
    return 0


def command_plan(args: argparse.Namespace) -> int:
    from .planner import plan_chart, plan_pool, plan_summary, plan_table
    from .report import metrics_json

    try:
        slots_options = sorted({int(s) for s in args.slots.split(",") if s.strip()})
    except ValueError:
        raise InputError(f"--slots {args.slots!r}: comma-separated whole numbers, e.g. 1,2,4") from None
    if not slots_options or slots_options[0] < 1:
        raise InputError("--slots: each option must be at least 1")
    _positive("--p95-seconds", args.p95_seconds)
    if args.max_builders < 1:
        raise InputError("--max-builders must be at least 1")
    config = simulation_config(args, 1, slots_options[0])
    workload = load_workload(args)
    if not workload.arrivals:
        raise InputError("the workload has no builds: raise --builds-per-day or --days")
    if not args.no_charts and args.output_dir:
        from .report import _pyplot

        _pyplot()  # fail before the search, not after it
    _say(f"planning for {len(workload.arrivals)} builds ({workload.description})")
    result = plan_pool(
        workload,
        args.p95_seconds,
        metric=args.metric,
        slots_options=slots_options,
        max_builders=args.max_builders,
        config=config,
        policy=args.policy,
        progress=lambda p: _say(
            f"  {p.builders:>4} builders × {p.slots} slots: p95 {p.p95:.0f} s {'meets' if p.meets else 'misses'} the target"
        ),
    )
    table = plan_table(result)
    summary = plan_summary(result)
    document = {
        "workload": workload.description,
        "target_seconds": result.target_seconds,
        "metric": result.metric,
        "policy": result.policy,
        "summary": summary,
        "best": {"builders": result.best.builders, "slots": result.best.slots} if result.best else None,
        "points": [
            {
                "builders": p.builders,
                "slots": p.slots,
                "p95": p.p95,
                "meets": p.meets,
                "metrics": metrics_json([p.metrics])[0],
            }
            for p in result.points
        ],
    }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(table + "\n" + summary)
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(json.dumps(document, indent=2) + "\n")
        report = f"# Capacity plan\n\nWorkload: {workload.description}.\n\n{summary}\n\n{table}"
        if not args.no_charts:
            plan_chart(result, out / "plan-curve.png")
            report += "\n![plan-curve](plan-curve.png)\n"
        (out / "plan.md").write_text(report)
        _say(f"wrote {out}/plan.md, plan.json" + ("" if args.no_charts else ", plan-curve.png"))
    return 0 if result.best is not None else 1


def run_command(args: argparse.Namespace) -> int:
    if args.command == "simulate":
        return command_simulate(args)
    if args.command == "plan":
        return command_plan(args)
    raise InputError(f"unknown command {args.command}")
