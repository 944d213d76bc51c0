"""Acquire+release through the scheduler vs. directly on the Leases, N concurrent clients, real testbed.

    eval "$(testbed/up)" && python bench/scheduler_throughput.py --clients 50 --rounds 10

Starts its own `warmbuild scheduler` replica(s) on 127.0.0.1 (identity, RBAC and a throwaway TLS
CA made with the admin kubeconfig, as the integration tests do), then runs the same loop both
ways, as bench/lease_latency.py does: each client takes a slot (max wait 0, so a busy pool is an
immediate retry, not a wait) and releases it at once, until it has `--rounds` pairs. Printed: a
Markdown table (pairs per second, acquire and acquire+release p50/p99, share of attempts that
found every slot busy) and the ratios. Bounded: every loop stops after `--max-seconds`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from lease_latency import run  # noqa: E402  (bench/ is on sys.path: the same loop measures both sides)
from scheduler_harness import CI_USER, SchedulerProcess, ci_scheduler_token, prepare  # noqa: E402

from warmbuild.kube.client import connect  # noqa: E402
from warmbuild.pool.broker import DirectLeases  # noqa: E402
from warmbuild.scheduler.client import SchedulerClient, SchedulerOptions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10, help="successful acquire+release pairs per client")
    parser.add_argument("--replicas", type=int, default=1, help="scheduler replicas to start (clients use all)")
    parser.add_argument("--max-seconds", type=float, default=120, help="stop each side after this long")
    parser.add_argument("--repeat", type=int, default=1, help="alternating direct/scheduler runs (medians compared)")
    parser.add_argument("--namespace", default=os.environ.get("WARMBUILD_NAMESPACE", "warmbuild"))
    parser.add_argument("--pool", default=os.environ.get("WARMBUILD_POOL", "default"))
    args = parser.parse_args()

    admin = connect(os.environ["KUBECONFIG"])
    ci_kubeconfig = os.environ["WARMBUILD_CI_KUBECONFIG"]
    with tempfile.TemporaryDirectory(prefix="warmbuild-bench-") as directory:
        setup = prepare(admin, Path(directory), [{"pools": [args.pool], "users": [CI_USER]}])
        replicas = [SchedulerProcess(admin, setup, f"bench-{i}") for i in range(args.replicas)]
        try:
            token = ci_scheduler_token()
            urls = tuple(r.url for r in replicas)
            rows = []
            for _ in range(args.repeat):  # alternate, so a load change on the machine hits both sides
                rows.append(
                    run(
                        "direct Leases",
                        lambda: DirectLeases(connect(ci_kubeconfig)),
                        args.clients,
                        args.rounds,
                        args.namespace,
                        args.pool,
                        args.max_seconds,
                    )
                )
                rows.append(
                    run(
                        f"scheduler ({args.replicas} replica{'s' if args.replicas > 1 else ''})",
                        lambda: SchedulerClient(SchedulerOptions(urls=urls, token=token, ca_file=str(setup.ca))),
                        args.clients,
                        args.rounds,
                        args.namespace,
                        args.pool,
                        args.max_seconds,
                    )
                )
        finally:
            for replica in replicas:
                replica.stop()

    print(
        "| path | clients | pairs | pairs/s | acquire p50 ms | acquire p99 ms | acquire+release p50 ms | acquire+release p99 ms | all-busy attempts |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['label']} | {r['clients']} | {r['pairs']} | {r['pairs_per_second']:.1f} | {r['acquire_p50']:.1f} | "
            f"{r['acquire_p99']:.1f} | {r['pair_p50']:.1f} | {r['pair_p99']:.1f} | {r['busy_share']:.0%} |"
        )
    direct, scheduler = rows[0::2], rows[1::2]
    rate = statistics.median(r["pairs_per_second"] for r in scheduler) / statistics.median(
        r["pairs_per_second"] for r in direct
    )
    p99 = statistics.median(r["pair_p99"] for r in scheduler) / statistics.median(r["pair_p99"] for r in direct)
    print()
    print(
        f"scheduler / direct (medians over {args.repeat} alternating run{'s' if args.repeat > 1 else ''}): "
        f"pairs/s {rate:.2f}x, acquire+release p99 {p99:.2f}x"
    )


if __name__ == "__main__":
    main()
