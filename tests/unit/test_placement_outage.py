"""Placement through an API-server or etcd restart: it waits and retries within --max-wait, says so in
one line, fails with one line when the wait is used up, and never leaves a slot it took unanswered.

The pool is the in-memory Lease API of conftest (real compare-and-swap) behind a switch that makes
it answer like a restarting API server (`ClusterUnavailable`), on the fake clock that placement's
sleeps move."""

from __future__ import annotations

import socket

import pytest

from warmbuild.errors import ClusterError, ClusterRefused, ClusterUnavailable
from warmbuild.kube.client import KubeClient
from warmbuild.kube.kubeconfig import ClusterAccess
from warmbuild.pool import placement
from warmbuild.pool.leases import HolderInfo, list_pool_leases
from warmbuild.pool.membership import Builder
from warmbuild.pool.placement import PlacementRequest, acquire_build_slot
from warmbuild.pool.workload import explicit_key

NS, POOL = "ns", "default"
BUILDERS = (
    Builder("builder-0", "uid-0", "tcp://10.0.0.1:1234", 1),
    Builder("builder-1", "uid-1", "tcp://10.0.0.2:1234", 1),
)


class Phased:
    """Down (refused connections) until `up_at`, then refusing (403, an authorizer still filling its
    caches) until `authorized_at`, then the Lease API."""

    def __init__(self, api, clock, up_at: float, authorized_at: float):
        self.api, self.clock, self.up_at, self.authorized_at = api, clock, up_at, authorized_at

    def server_now(self):
        return self.api.server_now()

    def request(self, method, path, body=None, query=None, content_type="application/json", timeout=None):
        if self.clock.now < self.up_at:
            raise ClusterUnavailable("cannot reach the Kubernetes API at https://127.0.0.1:6443 (test): refused")
        if self.clock.now < self.authorized_at:
            raise ClusterRefused("missing permission: list leases.coordination.k8s.io in namespace ns (test)")
        return self.api.request(method, path, body, query, content_type, timeout)


class Flaky:
    """The Lease API, down while `down(now)` says so; `commit_then_fail` commits the next write and then
    loses its answer (the API server died after etcd took it)."""

    def __init__(self, api, clock, down=lambda _now: False, error: ClusterError | None = None):
        self.api, self.clock, self.down = api, clock, down
        self.error = error or ClusterUnavailable(
            "cannot reach the Kubernetes API at https://127.0.0.1:6443 (test): Connection refused"
        )
        self.commit_then_fail = False
        self.calls = 0

    def server_now(self):
        return self.api.server_now()

    def request(self, method, path, body=None, query=None, content_type="application/json", timeout=None):
        self.calls += 1
        if self.down(self.clock.now):
            raise self.error
        answer = self.api.request(method, path, body, query, content_type, timeout)
        if method in ("POST", "PUT") and self.commit_then_fail:
            self.commit_then_fail = False
            raise ClusterUnavailable("Kubernetes API error 504 on PUT: Timeout: request did not complete")
        return answer


class Reader:
    def __init__(self, client):
        self.client = client

    def read(self):
        return BUILDERS, list_pool_leases(self.client, NS, POOL)


class NoHistory:
    def recent(self, log):
        return ()


@pytest.fixture
def fake_monotonic(clock, monkeypatch):
    monkeypatch.setattr(placement.time, "monotonic", clock.monotonic)
    return clock


def place(client, clock, max_wait=60.0, identity="job-1", lines=None):
    request = PlacementRequest(NS, POOL, explicit_key("app"), HolderInfo(identity), max_wait_seconds=max_wait)
    log = (lines if lines is not None else []).append
    return acquire_build_slot(client, request, log=log, sleep=clock.sleep, history=NoHistory(), reader=Reader(client))


def test_a_20s_outage_during_placement_is_waited_out_and_said_twice(lease_api, fake_monotonic):
    clock = fake_monotonic
    client = Flaky(lease_api, clock, down=lambda now: now < 20)
    lines: list[str] = []
    grant = place(client, clock, lines=lines)
    assert grant.lease is not None and grant.path == "warm"
    assert 20 <= clock.now < 22, "retried about every second, not after the wait"
    assert len(lines) == 2, lines
    assert lines[0].startswith("the Kubernetes API is not answering (cannot reach the Kubernetes API")
    assert "placement retries for up to 60s (--max-wait)" in lines[0]
    assert lines[1] == "the Kubernetes API answers again after 20s; placement goes on"
    assert 18 <= client.calls <= 25


def test_an_outage_longer_than_max_wait_is_one_clear_line_exit_6(lease_api, fake_monotonic):
    clock = fake_monotonic
    client = Flaky(lease_api, clock, down=lambda now: True)
    with pytest.raises(ClusterUnavailable) as caught:
        place(client, clock, max_wait=30)
    message = caught.value.message
    assert caught.value.exit_code == 6 and "\n" not in message
    assert message.startswith("pool 'default' in namespace ns: no placement within --max-wait 30s")
    assert "the Kubernetes API did not answer for 30s: cannot reach the Kubernetes API" in message
    assert 30 <= clock.now < 31.5
    assert list_pool_leases(lease_api, NS, POOL) == {}


def test_a_refusal_is_not_an_outage_and_ends_placement_at_once(lease_api, fake_monotonic):
    clock = fake_monotonic
    refused = ClusterError("missing permission: list leases.coordination.k8s.io in namespace ns")
    client = Flaky(lease_api, clock, down=lambda now: True, error=refused)
    with pytest.raises(ClusterError, match="missing permission") as caught:
        place(client, clock)
    assert not isinstance(caught.value, ClusterUnavailable) and clock.now == 0 and client.calls == 1


def test_no_max_wait_means_no_waiting_through_an_outage(lease_api, fake_monotonic):
    clock = fake_monotonic
    with pytest.raises(ClusterUnavailable, match="no placement within --max-wait 0s"):
        place(Flaky(lease_api, clock, down=lambda now: True), clock, max_wait=0)


def test_a_slot_write_whose_answer_was_lost_is_taken_as_granted_not_left_held(lease_api, fake_monotonic):
    clock = fake_monotonic
    client = Flaky(lease_api, clock)
    client.commit_then_fail = True  # etcd committed the Lease; the answer never came back
    lines: list[str] = []
    grant = place(client, clock, lines=lines, identity="job-lost-answer")
    held = {name: view.holder for name, view in list_pool_leases(lease_api, NS, POOL).items() if view.holder}
    assert held == {grant.lease.name: "job-lost-answer"}, "one slot, the one granted: nothing left held"
    assert grant.lease.transitions == 1 and grant.path == "warm" and grant.builder.name == grant.lease.builder
    assert len(lines) == 2 and "(Kubernetes API error 504 on PUT" in lines[0], lines


def test_the_client_tells_an_outage_from_a_refusal():
    client = KubeClient(ClusterAccess(server="https://127.0.0.1:1", description="test", token="t"))
    for status in (500, 502, 503, 504, 429):
        with pytest.raises(ClusterUnavailable):
            client._raise_for(status, b'{"message": "etcdserver: request timed out"}', "GET", "/api/v1/pods")
    for status in (400, 401, 403, 422):
        with pytest.raises(ClusterError) as caught:
            client._raise_for(status, b"{}", "GET", "/api/v1/namespaces/ns/pods")
        assert not isinstance(caught.value, ClusterUnavailable)
    assert not isinstance(
        client._unreachable(OSError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate")), ClusterUnavailable
    )
    assert isinstance(client._unreachable(OSError("Connection reset by peer")), ClusterUnavailable)


def test_a_refused_connection_is_an_outage():
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = KubeClient(ClusterAccess(server=f"https://127.0.0.1:{port}", description="test", token="t"))
    with pytest.raises(ClusterUnavailable, match=f"cannot reach the Kubernetes API at https://127.0.0.1:{port}"):
        client.request("GET", "/api/v1/namespaces/ns/pods")


def test_refusals_from_a_restarted_api_server_catching_up_are_part_of_the_outage(lease_api, fake_monotonic):
    clock = fake_monotonic
    lines: list[str] = []
    grant = place(Phased(lease_api, clock, up_at=10, authorized_at=13), clock, lines=lines)
    assert grant.lease is not None and 13 <= clock.now < 15
    assert len(lines) == 2 and lines[1].startswith("the Kubernetes API answers again after 1"), lines


def test_refusals_that_outlast_the_grace_after_an_outage_are_the_refusal(lease_api, fake_monotonic):
    clock = fake_monotonic
    with pytest.raises(ClusterRefused, match="missing permission: list leases"):
        place(Phased(lease_api, clock, up_at=5, authorized_at=10_000), clock, max_wait=120)
    assert 5 + placement.REFUSED_GRACE_SECONDS <= clock.now < 5 + placement.REFUSED_GRACE_SECONDS + 2
