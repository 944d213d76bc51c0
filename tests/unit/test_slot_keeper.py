"""The renewal rule (`pool.leases.SlotKeeper`): an outage is retried through, a lost Lease aborts once,
and a hung renew request is bounded by its timeout. Fake time for the keeper's loop (FakeClock and the
fake API server's clock move together); real sockets for the timeouts."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from datetime import timedelta

import pytest

from warmbuild.errors import ClusterError, LeaseLost
from warmbuild.kube.client import KubeClient, format_micro_time
from warmbuild.kube.kubeconfig import ClusterAccess
from warmbuild.kube.views import parse_lease
from warmbuild.pool.leases import (
    HolderInfo,
    SlotKeeper,
    list_pool_leases,
    outage_limit,
    renew_interval,
    renew_slot,
    renew_timeout,
    try_acquire_slot,
)
from warmbuild.pool.membership import Builder

NS, POOL = "ns", "default"
BUILDER = Builder("builder-0", "pod-uid-0", "tcp://10.0.0.1:1234", slots=1)
SLOT = "builder-0-slot-0"


class Outage:
    """The fake API server as one runner sees it: unreachable between two fake times."""

    def __init__(self, api, clock, start: float, end: float):
        self.api, self.clock, self.start, self.end = api, clock, start, end
        self.refused = 0

    def request(self, *args, **kwargs):
        if self.start <= self.clock.now < self.end:
            self.refused += 1
            raise ClusterError("cannot reach the Kubernetes API at https://127.0.0.1:6443 (test): Connection refused")
        return self.api.request(*args, **kwargs)

    def server_now(self):
        return self.api.server_now()


def acquire(api, identity: str, duration: int = 6):
    return try_acquire_slot(api, NS, POOL, BUILDER, HolderInfo(identity), list_pool_leases(api, NS, POOL), duration)


def keeper_for(client, held, clock, api, until: float, every_second=None):
    """A keeper run in this thread on fake time until `until`; `every_second(t)` runs as time passes."""
    reasons: list[str] = []
    lines: list[str] = []

    def wait(seconds: float) -> bool:
        step = 0.25
        while seconds > 1e-9:
            moved = min(step, seconds)
            clock.sleep(moved)
            api.advance(moved)
            seconds -= moved
            if every_second and abs(clock.now - round(clock.now)) < 1e-9:
                every_second(round(clock.now))
        return clock.now >= until

    keeper = SlotKeeper(
        lambda slot, timeout: renew_slot(client, slot, timeout),
        held,
        on_lost=reasons.append,
        clock=clock.monotonic,
        log=lines.append,
        wait=wait,
    )
    return keeper, reasons, lines


def test_renew_timeouts_and_retries_stay_under_a_third_of_the_lease():
    for duration in (3, 6, 15, 60, 3600):
        assert renew_timeout(duration) < duration / 3
        assert renew_interval(duration) + renew_timeout(duration) < duration
    assert renew_timeout(3600) == 10.0
    assert outage_limit(6) == 120 and outage_limit(15) == 120 and outage_limit(600) == 1200


def test_an_outage_longer_than_the_lease_is_retried_through_and_the_lease_renewed(lease_api, clock):
    held = acquire(lease_api, "job-a", duration=6)
    down = Outage(lease_api, clock, start=3, end=23)  # 20 s: over three lease durations
    expired_during_outage = []

    def look(t: int):
        if t == 20:
            expired_during_outage.append(parse_lease(lease_api.get(NS, SLOT)).is_free(lease_api.now))

    keeper, reasons, lines = keeper_for(down, held, clock, lease_api, until=40, every_second=look)
    keeper.run()

    assert reasons == [] and keeper.lost_reason is None, "an outage is not a lost lease"
    assert expired_during_outage == [True], "by the server's clock the lease had expired while it was down"
    assert down.refused >= 15, "the keeper kept trying during the outage"
    lease = parse_lease(lease_api.get(NS, SLOT))
    assert (lease.holder, lease.transitions) == ("job-a", held.transitions)
    assert lease.renewed_at >= lease_api.now - timedelta(seconds=renew_interval(6) + 0.25)
    assert not lease.is_free(lease_api.now)
    # one warning when renewals start failing, one when they work again; never one per retry
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"could not renew slot lease {SLOT} (cannot reach the Kubernetes API")
    assert "the build goes on" in lines[0]
    assert lines[1].startswith(f"renewed slot lease {SLOT} again after 2")
    # every renew request (after the acquisition's LIST and POST) carried a timeout under a third of the lease
    renews = lease_api.timeouts[2:]
    assert renews and all(t is not None and t < 6 / 3 for t in renews)


def test_a_lease_taken_over_during_the_outage_aborts_the_build_once(lease_api, clock):
    held = acquire(lease_api, "job-a", duration=6)
    down = Outage(lease_api, clock, start=3, end=23)  # only job-a's runner is cut off
    taken = []

    def another_job_takes_it(t: int):
        if t == 15 and not taken:
            taken.append(acquire(lease_api, "job-b", duration=6))

    keeper, reasons, lines = keeper_for(down, held, clock, lease_api, until=60, every_second=another_job_takes_it)
    keeper.run()

    assert taken and taken[0] is not None, "the expired lease was free to take"
    assert reasons == [f"slot lease {SLOT} is now held by job-b"] and keeper.lost_reason == reasons[0]
    assert 23 <= clock.now < 23 + renew_interval(6), "noticed at the first renewal after the recovery"
    lease = parse_lease(lease_api.get(NS, SLOT))
    assert (lease.holder, lease.transitions) == ("job-b", held.transitions + 1), "job-a never wrote over job-b"
    assert len(lines) == 1 and lines[0].startswith(f"could not renew slot lease {SLOT}")


def test_released_by_someone_else_or_deleted_is_lost_at_once(lease_api, clock):
    held = acquire(lease_api, "job-a", duration=6)
    lease_api.objects.pop((NS, SLOT))  # the builder left: the garbage collector removed its Leases
    keeper, reasons, _ = keeper_for(lease_api, held, clock, lease_api, until=60)
    keeper.run()
    assert reasons == [f"slot lease {SLOT} was deleted (its builder left the pool)"]
    assert clock.now == renew_interval(6)


def test_an_outage_that_does_not_end_gives_the_slot_up_at_the_limit(lease_api, clock):
    held = acquire(lease_api, "job-a", duration=6)
    down = Outage(lease_api, clock, start=1, end=10_000)
    keeper, reasons, lines = keeper_for(down, held, clock, lease_api, until=1_000)
    keeper.run()
    assert len(reasons) == 1, reasons
    assert reasons[0].startswith(f"could not renew slot lease {SLOT} for 12") and "another build's now" in reasons[0]
    assert outage_limit(6) <= clock.now < outage_limit(6) + renew_interval(6) + 1
    assert len(lines) == 1


def test_a_renewal_lost_after_the_build_ended_aborts_nothing(lease_api, clock):
    held = acquire(lease_api, "job-a", duration=6)
    reasons: list[str] = []
    keeper: SlotKeeper

    def renew(slot, timeout):
        keeper.stop()  # the build ended and gave the slot back while this renewal was in flight
        raise LeaseLost(f"slot lease {SLOT} is now held by nobody")

    keeper = SlotKeeper(renew, held, on_lost=reasons.append, clock=clock.monotonic, wait=lambda s: False)
    keeper.run()
    assert reasons == [] and keeper.lost_reason is None


# ----------------------------------------------------------------- a hung request is bounded (real sockets)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections (the kernel completes the handshake) and never answers:
    what a SIGSTOPped API server looks like to a client."""
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def client_for(url: str) -> KubeClient:
    return KubeClient(ClusterAccess(server=url, description="test server"))


def slot_lease(duration: int = 3):
    from datetime import datetime, timezone

    from warmbuild.pool.leases import SlotLease

    return SlotLease(NS, SLOT, "builder-0", "job-a", 4, "7", duration, datetime.now(timezone.utc))


def test_a_request_with_a_timeout_to_a_hung_server_ends_within_it(silent_server):
    started = time.monotonic()
    with pytest.raises(ClusterError, match="cannot reach the Kubernetes API"):
        client_for(silent_server).request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/x", timeout=0.5)
    assert 0.4 < time.monotonic() - started < 0.9


def test_a_renew_that_hangs_is_bounded_by_its_timeout(silent_server):
    held = slot_lease(duration=3)
    started = time.monotonic()
    with pytest.raises(ClusterError):
        renew_slot(client_for(silent_server), held, renew_timeout(3))
    assert time.monotonic() - started < renew_timeout(3) + 0.25 < 3 / 3 + 0.25


class SlowLeaseServer(http.server.BaseHTTPRequestHandler):
    """Answers the renew's GET after 0.5 s with a Lease still ours, then never answers its PUT."""

    def do_GET(self):
        time.sleep(0.5)
        now = format_micro_time(self.server.now())
        body = json.dumps(
            {
                "metadata": {"name": SLOT, "namespace": NS, "resourceVersion": "7", "uid": "u"},
                "spec": {"holderIdentity": "job-a", "leaseTransitions": 4, "leaseDurationSeconds": 3, "renewTime": now},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        self.server.stopped.wait(10)

    def log_message(self, *args):
        pass


def test_the_renew_timeout_covers_all_its_requests_together():
    from datetime import datetime, timezone

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowLeaseServer)
    server.now = lambda: datetime.now(timezone.utc)
    server.stopped = threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(ClusterError):
            renew_slot(client_for(f"http://127.0.0.1:{server.server_address[1]}"), slot_lease(3), timeout=0.75)
        elapsed = time.monotonic() - started
    finally:
        server.stopped.set()
        server.shutdown()
        server.server_close()
    assert 0.5 < elapsed < 0.95, f"GET 0.5 s + a hung PUT took {elapsed:.2f}s with a 0.75 s budget"
