"""The scheduler's routes with a stub service on loopback (uvicorn, plain HTTP in a thread): trust,
429 limits, status redaction, token-bound bodies. The real service on the testbed:
tests/integration/test_scheduler_isolation.py."""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime, timezone

import pytest
import requests

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from warmbuild.pool.status import BuilderStatus, PoolStatus, SlotStatus  # noqa: E402
from warmbuild.scheduler.app import AppParts, create_app  # noqa: E402
from warmbuild.scheduler.auth import Caller, parse_access_config  # noqa: E402
from warmbuild.scheduler.metrics import SchedulerMetrics  # noqa: E402
from warmbuild.scheduler.service import AcquireAnswer  # noqa: E402

CONFIG = """
grants:
  - {pools: [default], users: [ci]}
  - {pools: [default], users: [forks], trusted: false}
  - {pools: [default], users: [oncall], admin: true}
limits: {concurrent_requests: 1}
"""


class Reviewer:
    def review(self, token: str) -> Caller:
        return Caller(token)


class Service:
    ephemeral = None  # a scheduler without ephemeral settings: untrusted callers are refused

    def __init__(self):
        self.inside = threading.Event()
        self.release = threading.Event()
        self.acquires = 0

    def acquire(self, who, ask):
        self.asked = ask
        self.acquires += 1
        self.inside.set()
        self.release.wait(5)
        return AcquireAnswer("wait", 0.0, "no slot yet")

    def pool_status(self, pool):
        slot = SlotStatus("b-slot-0", "h/1@ci", "https://ci/run/1", "team/app", 3.0, 1.0, busy=True)
        builder = BuilderStatus("b", "tcp://10.0.0.1:1234", True, False, False, (slot,))
        return PoolStatus("ns", pool, datetime(2026, 1, 1, tzinfo=timezone.utc), (builder,))


@pytest.fixture
def app():
    access = parse_access_config(CONFIG, "auth.yaml")
    service = Service()
    metrics = SchedulerMetrics(access.pools, lambda pool: service.pool_status(pool))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(AppParts(service, Reviewer(), access, metrics)), host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", service
    service.release.set()
    server.should_exit = True
    thread.join(5)


def call(base, method, path, token, body=None):
    return requests.request(method, base + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_an_untrusted_caller_is_refused_before_placement(app):
    client, service = app
    answer = call(client, "POST", "/v1/pools/default/acquire", "forks", {"workload_key": "k", "max_wait_seconds": 0})
    assert answer.status_code == 403 and answer.json()["code"] == "untrusted"
    assert "ephemeral builder" in answer.json()["error"] and service.acquires == 0


def test_a_retry_names_the_builders_its_build_lost_and_placement_gets_them(app):
    client, service = app
    service.release.set()
    body = {"workload_key": "k", "max_wait_seconds": 0, "avoid_builders": ["builders-0"]}
    assert call(client, "POST", "/v1/pools/default/acquire", "ci", body).status_code == 200
    assert list(service.asked.avoid_builders) == ["builders-0"]
    too_many = dict(body, avoid_builders=[f"b-{i}" for i in range(17)])
    assert call(client, "POST", "/v1/pools/default/acquire", "ci", too_many).status_code == 400


def test_one_identity_beyond_its_concurrent_requests_gets_429_and_others_do_not(app):
    client, service = app
    body = {"workload_key": "k", "max_wait_seconds": 0}
    first = threading.Thread(target=lambda: call(client, "POST", "/v1/pools/default/acquire", "ci", body))
    first.start()
    try:
        assert service.inside.wait(5)
        over = call(client, "POST", "/v1/pools/default/acquire", "ci", body)
        assert over.status_code == 429 and over.headers["Retry-After"] == "2" and over.json()["code"] == "limit"
        assert call(client, "GET", "/v1/pools/default/status", "oncall").status_code == 200  # another identity
    finally:
        service.release.set()
        first.join(5)


def test_status_shows_holders_to_admins_only(app):
    client, _ = app
    hidden = call(client, "GET", "/v1/pools/default/status", "ci").json()
    shown = call(client, "GET", "/v1/pools/default/status", "oncall").json()
    assert hidden["builders"][0]["in_use"] == 1 and hidden["builders"][0]["slots"][0]["busy"] is True
    assert "h/1@ci" not in str(hidden) and "run/1" not in str(hidden) and "team/app" not in str(hidden)
    assert shown["builders"][0]["slots"][0]["holder"] == "h/1@ci"


@pytest.mark.parametrize("route", ["renew", "release"])
def test_renew_and_release_need_a_release_token(app, route):
    client, _ = app
    body = {"holder": "h/1@ci", "transitions": 1} if route == "renew" else {"holder": "h/1@ci"}
    answer = call(client, "POST", f"/v1/slots/b-slot-0/{route}", "ci", body)
    assert answer.status_code == 400 and "release_token" in answer.json()["error"]


def test_a_lease_longer_than_300_seconds_is_refused(app):
    client, _ = app
    body = {"workload_key": "k", "max_wait_seconds": 0, "lease_seconds": 301}
    answer = call(client, "POST", "/v1/pools/default/acquire", "ci", body)
    assert answer.status_code == 400 and "lease_seconds" in answer.json()["error"]
