"""Small helpers the integration tests share (imported by module name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
import threading
import time

from warmbuild.kube.client import KubeConflict
from warmbuild.kube.names import leases_path
from warmbuild.pool.leases import list_pool_leases

POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")


def wait_for(predicate, timeout: float, what: str = "condition", interval: float = 0.2):
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def take_over(admin, lease_name: str, usurper: str = "usurper", namespace: str = NAMESPACE) -> None:
    """Another holder takes the slot: a compare-and-swap, retried if the holder renewed meanwhile."""
    for _ in range(20):
        lease = admin.request("GET", leases_path(namespace, lease_name)).body
        lease["spec"]["holderIdentity"] = usurper
        lease["spec"]["leaseTransitions"] = int(lease["spec"].get("leaseTransitions") or 0) + 1
        try:
            admin.request("PUT", leases_path(namespace, lease_name), body=lease)
            return
        except KubeConflict:
            continue
    raise AssertionError(f"could not take over {lease_name}")


def held_slots(client, namespace: str = NAMESPACE, pool: str = POOL) -> dict[str, str]:
    """Lease name → holder, for every slot of the pool held right now (by API-server time)."""
    now = client.server_now()
    return {
        name: lease.holder
        for name, lease in list_pool_leases(client, namespace, pool).items()
        if not lease.is_free(now)
    }


def race_for_slots(
    acquire_hold_release, clients: int, observer_client, during=None, join_timeout: float = 240.0, most_holders: int = 6
):
    """Run `clients` threads of `acquire_hold_release(index) -> (lease, start, end, fencing token)` while
    an observer watches the pool's Leases. Returns (most holders seen, violations, intervals, errors)."""
    seen_max = 0
    violations: list[str] = []
    intervals: list[tuple[str, float, float, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def observe():
        nonlocal seen_max
        while not stop.is_set():
            holders = held_slots(observer_client)
            seen_max = max(seen_max, len(holders))
            if len(holders) > most_holders:
                violations.append(f"{len(holders)} holders: {holders}")
            time.sleep(0.02)

    def run(index: int):
        try:
            interval = acquire_hold_release(index)
            with lock:
                intervals.append(interval)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    observer = threading.Thread(target=observe)
    observer.start()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    if during is not None:
        during()
    for t in threads:
        t.join(timeout=join_timeout)
    stop.set()
    observer.join()
    return seen_max, violations, intervals, errors


def assert_served_without_overlap(intervals, clients: int) -> None:
    """Every client was served, no two held one slot at once, and no fencing token was reused."""
    assert len(intervals) == clients
    by_lease: dict[str, list[tuple[float, float]]] = {}
    for name, start, end, _token in intervals:
        by_lease.setdefault(name, []).append((start, end))
    for name, spans in by_lease.items():
        spans.sort()
        for (_, end_a), (start_b, _) in zip(spans, spans[1:]):
            assert end_a <= start_b, f"two holders overlapped on {name}"
    tokens = [token for *_, token in intervals]
    assert len(set(tokens)) == len(tokens)
