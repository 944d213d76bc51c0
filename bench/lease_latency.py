"""Lease acquire+release latency with N concurrent clients against the real API server.

    eval "$(testbed/up)" && python bench/lease_latency.py --clients 32 --rounds 20
    eval "$(testbed/up)" && python bench/lease_latency.py --scale 8,32,128 --rounds 10

Each client loops: take a slot through the placement code (max wait 0, so a busy pool is a
retry, not a wait), release it at once. Reported: the latency of the acquire call and of the
acquire+release pair for successful rounds (p50/p99), the share of attempts that found every
slot busy, and pairs per second. Side by side: the same with 1 client, the no-contention floor.

`--scale` measures the API server and the lease protocol, not a queue: 8, 32 and 128 clients, each a
process of its own as CI jobs are (its own API client and connection; in at most 8 OS processes of
threads, on this machine's cores), against a pool made for the run — one builder pod
(StatefulSet `lease-bench`, pool `lease-bench`, deleted afterwards) with more slots than clients, so
a client waits for the API server, never for a slot. Reported per client count: acquire and
acquire+release p50/p99, and API requests per build (every request the client sent — pod and Lease
lists, the compare-and-swap writes including the ones that lost a race, the release — over the
pairs it completed).
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


BENCH_POOL = "lease-bench"


def bench_pool_manifest(namespace: str, slots: int) -> dict:
    """One builder pod with `slots` slots, as the testbed's pool is made (the node emulator runs it)."""
    labels = {"app.kubernetes.io/name": "warmbuild-builder", "warmbuild.dev/pool": BENCH_POOL}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": BENCH_POOL, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"warmbuild.dev/slots": str(slots)}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "buildkitd",
                            "image": "moby/buildkit:v0.34.2",
                            "args": ["--addr", "tcp://0.0.0.0:1234", "--oci-worker-net", "host"],
                            "ports": [{"name": "buildkitd", "containerPort": 1234}],
                            "readinessProbe": {"tcpSocket": {"port": "buildkitd"}, "periodSeconds": 5},
                        }
                    ],
                },
            },
        },
    }


def make_bench_pool(admin, namespace: str, slots: int) -> None:
    from warmbuild.pool.membership import discover_builders

    path = f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{BENCH_POOL}"
    admin.request(
        "PATCH",
        f"{path}?fieldManager=warmbuild-bench&force=true",
        body=bench_pool_manifest(namespace, slots),
        content_type="application/apply-patch+yaml",
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        builders = discover_builders(admin, namespace, BENCH_POOL)
        if builders and builders[0].slots == slots:
            return
        time.sleep(1)
    raise SystemExit(f"the {BENCH_POOL} builder was not Ready within 180s")


def delete_bench_pool(admin, namespace: str) -> None:
    from warmbuild.kube.client import KubeNotFound

    try:
        admin.request(
            "DELETE",
            f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{BENCH_POOL}",
            body={"propagationPolicy": "Foreground"},
        )
    except KubeNotFound:
        pass


def _scale_worker(kubeconfig: str, namespace: str, clients: int, first: int, rounds: int, start_at: float, out) -> None:
    """One OS process running `clients` client threads; puts its measurements on `out`."""
    acquire_ms: list[float] = []
    pair_ms: list[float] = []
    requests = [0]
    busy = [0]
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        client = connect(kubeconfig)

        def count(_verb: str, _resource: str) -> None:
            with lock:
                requests[0] += 1

        client.on_request = count
        broker = DirectLeases(client)
        key = explicit_key(f"bench-key-{index}")
        done = 0
        while time.time() < start_at:
            time.sleep(0.01)
        while done < rounds:
            holder = HolderInfo(identity=f"bench-{index}-{uuid.uuid4().hex[:6]}")
            request = PlacementRequest(namespace, BENCH_POOL, key, holder, max_wait_seconds=0)
            start = time.perf_counter()
            try:
                grant = broker.acquire(request)
            except NoSlotAvailable:
                with lock:
                    busy[0] += 1
                continue
            acquired = time.perf_counter()
            broker.release(grant)
            released = time.perf_counter()
            with lock:
                acquire_ms.append((acquired - start) * 1000)
                pair_ms.append((released - start) * 1000)
            done += 1

    threads = [threading.Thread(target=client_loop, args=(first + i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({"acquire_ms": acquire_ms, "pair_ms": pair_ms, "requests": requests[0], "busy": busy[0]})


def run_scale(kubeconfig: str, namespace: str, clients: int, rounds: int, processes: int = 8) -> dict:
    """`clients` concurrent clients in up to `processes` OS processes, all starting at once."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    out = context.Queue()
    processes = min(processes, clients)
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    start_at = time.time() + 2.0  # every process has connected and waits: the clients start together
    workers, first = [], 0
    for share in shares:
        worker = context.Process(
            target=_scale_worker, args=(kubeconfig, namespace, share, first, rounds, start_at, out)
        )
        worker.start()
        workers.append(worker)
        first += share
    parts = [out.get(timeout=900) for _ in workers]
    for worker in workers:
        worker.join()
    elapsed = time.time() - start_at
    acquire_ms = [v for p in parts for v in p["acquire_ms"]]
    pair_ms = [v for p in parts for v in p["pair_ms"]]
    requests = sum(p["requests"] for p in parts)
    busy = sum(p["busy"] for p in parts)
    return {
        "clients": clients,
        "pairs": len(pair_ms),
        "acquire_p50": percentile(acquire_ms, 50),
        "acquire_p99": percentile(acquire_ms, 99),
        "pair_p50": percentile(pair_ms, 50),
        "pair_p99": percentile(pair_ms, 99),
        "requests_per_build": requests / len(pair_ms) if pair_ms else float("nan"),
        "busy_share": busy / (busy + len(pair_ms)) if pair_ms else 0.0,
        "pairs_per_second": len(pair_ms) / elapsed,
    }


def scale(args) -> None:
    admin = connect(os.environ["KUBECONFIG"])
    counts = [int(c) for c in args.scale.split(",")]
    make_bench_pool(admin, args.namespace, max(counts) + 16)
    try:
        rows = [run_scale(args.kubeconfig, args.namespace, n, args.rounds) for n in counts]
    finally:
        delete_bench_pool(admin, args.namespace)
    print(
        "| clients | pairs | acquire p50 ms | acquire p99 ms | acquire+release p50 ms | acquire+release p99 ms "
        "| API requests per build | pairs/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['pairs']} | {r['acquire_p50']:.1f} | {r['acquire_p99']:.1f} | {r['pair_p50']:.1f} | "
            f"{r['pair_p99']:.1f} | {r['requests_per_build']:.1f} | {r['pairs_per_second']:.1f} |"
        )


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
    parser.add_argument(
        "--scale", default=None, help="e.g. 8,32,128: these client counts on a pool with a slot for each (see above)"
    )
    args = parser.parse_args()
    if args.scale:
        scale(args)
        return

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
