"""Small helpers the integration tests share (imported by module name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
import time

from warmbuild.leases import lease_is_free, list_pool_leases

POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def held_slots(client, namespace: str = NAMESPACE, pool: str = POOL) -> dict[str, str]:
    """Lease name → holder, for every slot of the pool held right now (by API-server time)."""
    now = client.server_now()
    return {
        name: lease["spec"]["holderIdentity"]
        for name, lease in list_pool_leases(client, namespace, pool).items()
        if not lease_is_free(lease, now)
    }
