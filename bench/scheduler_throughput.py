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
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from scheduler_harness import CI_USER, SchedulerProcess, ci_token, prepare  # noqa: E402

from warmbuild.broker import DirectLeases  # noqa: E402
from warmbuild.cluster import connect  # noqa: E402
from warmbuild.errors import NoSlotAvailable  # noqa: E402
from warmbuild.leases import HolderInfo  # noqa: E402
from warmbuild.placement import PlacementRequest  # noqa: E402
from warmbuild.scheduler.client import SchedulerClient, SchedulerOptions  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run(label: str, make_broker, clients: int, rounds: int, namespace: str, pool: str, max_seconds: float) -> dict:
    acquire_ms: list[float] = []
    pair_ms: list[float] = []
    busy = 0
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client_loop(index: int) -> None:
        nonlocal busy
        broker = make_broker()
        done = 0
        while done < rounds and time.monotonic() < deadline:
            holder = HolderInfo(identity=f"bench-{index}-{uuid.uuid4().hex[:6]}")
            request = PlacementRequest(namespace, pool, f"bench-key-{index}", holder, max_wait_seconds=0)
            start = time.perf_counter()
            try:
                grant = broker.acquire(request)
            except NoSlotAvailable:
                with lock:
                    busy += 1
                continue
            acquired = time.perf_counter()
            broker.release(grant)
            released = time.perf_counter()
            with lock:
                acquire_ms.append((acquired - start) * 1000)
                pair_ms.append((released - start) * 1000)
            done += 1
        if hasattr(broker, "close"):
            broker.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    attempts = len(pair_ms) + busy
    return {
        "label": label,
        "clients": clients,
        "pairs": len(pair_ms),
        "acquire_p50": percentile(acquire_ms, 50),
        "acquire_p99": percentile(acquire_ms, 99),
        "pair_p50": percentile(pair_ms, 50),
        "pair_p99": percentile(pair_ms, 99),
        "busy_share": busy / attempts if attempts else 0.0,
        "pairs_per_second": len(pair_ms) / elapsed,
    }


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
            token = ci_token()
            urls = tuple(r.url for r in replicas)
            rows = []
            for _ in range(args.repeat):  # alternate, so a load change on the machine hits both sides
                rows.append(run("direct Leases", lambda: DirectLeases(connect(ci_kubeconfig)),
                                args.clients, args.rounds, args.namespace, args.pool, args.max_seconds))
                rows.append(run(f"scheduler ({args.replicas} replica{'s' if args.replicas > 1 else ''})",
                                lambda: SchedulerClient(SchedulerOptions(urls=urls, token=token, ca_file=str(setup.ca))),
                                args.clients, args.rounds, args.namespace, args.pool, args.max_seconds))
        finally:
            for replica in replicas:
                replica.stop()

    print("| path | clients | pairs | pairs/s | acquire p50 ms | acquire p99 ms | acquire+release p50 ms | acquire+release p99 ms | all-busy attempts |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['clients']} | {r['pairs']} | {r['pairs_per_second']:.1f} | {r['acquire_p50']:.1f} | "
              f"{r['acquire_p99']:.1f} | {r['pair_p50']:.1f} | {r['pair_p99']:.1f} | {r['busy_share']:.0%} |")
    direct, scheduler = rows[0::2], rows[1::2]
    rate = statistics.median(r["pairs_per_second"] for r in scheduler) / statistics.median(r["pairs_per_second"] for r in direct)
    p99 = statistics.median(r["pair_p99"] for r in scheduler) / statistics.median(r["pair_p99"] for r in direct)
    print()
    print(f"scheduler / direct (medians over {args.repeat} alternating run{'s' if args.repeat > 1 else ''}): "
          f"pairs/s {rate:.2f}x, acquire+release p99 {p99:.2f}x")


if __name__ == "__main__":
    main()
