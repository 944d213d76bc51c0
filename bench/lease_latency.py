"""Lease acquire+release latency with N concurrent clients against the real API server.

    eval "$(testbed/up)" && python bench/lease_latency.py --clients 32 --rounds 20

Each client loops: take a slot through the placement code (max wait 0, so a busy pool is a
retry, not a wait), release it at once. Reported: the latency of the acquire call and of the
acquire+release pair for successful rounds (p50/p99), the share of attempts that found every
slot busy, and pairs per second. Side by side: the same with 1 client, the no-contention floor.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid

from warmbuild.errors import NoSlotAvailable
from warmbuild.kube.client import connect
from warmbuild.pool.broker import DirectLeases
from warmbuild.pool.leases import HolderInfo
from warmbuild.pool.placement import PlacementRequest
from warmbuild.pool.workload import explicit_key


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
            request = PlacementRequest(namespace, pool, explicit_key(f"bench-key-{index}"), holder, max_wait_seconds=0)
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
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20, help="successful acquire+release pairs per client")
    parser.add_argument(
        "--kubeconfig", default=os.environ.get("WARMBUILD_CI_KUBECONFIG") or os.environ.get("KUBECONFIG")
    )
    parser.add_argument("--namespace", default=os.environ.get("WARMBUILD_NAMESPACE", "warmbuild"))
    parser.add_argument("--pool", default=os.environ.get("WARMBUILD_POOL", "default"))
    parser.add_argument("--max-seconds", type=float, default=300, help="stop each run after this long")
    args = parser.parse_args()

    def direct():
        return DirectLeases(connect(args.kubeconfig))

    rows = [
        run("direct Leases", direct, 1, args.rounds, args.namespace, args.pool, args.max_seconds),
        run("direct Leases", direct, args.clients, args.rounds, args.namespace, args.pool, args.max_seconds),
    ]
    print(
        "| clients | pairs | acquire p50 ms | acquire p99 ms | acquire+release p50 ms | acquire+release p99 ms | all-busy attempts | pairs/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['pairs']} | {r['acquire_p50']:.1f} | {r['acquire_p99']:.1f} | {r['pair_p50']:.1f} | "
            f"{r['pair_p99']:.1f} | {r['busy_share']:.0%} | {r['pairs_per_second']:.1f} |"
        )
    single, many = rows
    print(f"p99 acquire+release, {args.clients} clients vs 1: {many['pair_p99'] / single['pair_p99']:.1f}x")


if __name__ == "__main__":
    main()
