"""How long the fleet simulator takes for 100,000 builds, per policy.

    python bench/simulate_scale.py [--builds 100000] [--builders 40] [--slots 2] [--policies warmbuild,sticky,random,dedicated]

A synthetic workload at internet scale — 500 workload keys (Zipf), 10,000 builds a day with a
daily peak, 10 % dependency changes — for as many days as it takes to reach --builds, simulated
under each policy. Prints the time to generate the arrivals, the time of each policy's run (and
its events per second), the total, and the usual comparison table. Nothing here needs a cluster.
"""

from __future__ import annotations

import argparse
import time

from warmbuild.simulate.model import POLICIES, FleetConfig, SimulationConfig
from warmbuild.simulate.report import metrics_table, policy_metrics
from warmbuild.simulate.runs import run_policy
from warmbuild.simulate.workload import SyntheticSpec, synthetic_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--builds-per-day", type=float, default=10_000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--builders", type=int, default=40)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--cache-keys", type=int, default=50)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    spec = SyntheticSpec(
        keys=args.keys, builds_per_day=args.builds_per_day, days=args.builds / args.builds_per_day, seed=args.seed
    )
    workload = synthetic_workload(spec)
    generated = time.perf_counter() - started
    print(f"workload: {len(workload.arrivals)} builds generated in {generated:.2f}s ({workload.description})")
    config = SimulationConfig(
        fleet=FleetConfig(builders=args.builders, slots=args.slots, cache_keys=args.cache_keys), seed=args.seed
    )
    metrics = []
    total = generated
    for name in [p.strip() for p in args.policies.split(",") if p.strip()]:
        t0 = time.perf_counter()
        run = run_policy(workload, name, config)
        seconds = time.perf_counter() - t0
        total += seconds
        metrics.append(policy_metrics(run))
        print(
            f"{name:>10}: {len(run.outcomes)} builds, {run.events} events in {seconds:.2f}s "
            f"({run.events / seconds:,.0f} events/s, {len(run.outcomes) / seconds:,.0f} builds/s)",
            flush=True,
        )
    print(f"total: {total:.2f}s for {len(metrics)} policies on {args.builders} builders × {args.slots} slots")
    print()
    print(metrics_table(metrics), end="")


if __name__ == "__main__":
    main()
