"""The scheduler client at its HTTP edge (`responses`): long-polls, replicas, bounded retries, clear errors."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest
import requests
import responses

from warmbuild import cli
from warmbuild.errors import ClusterError, InputError, LeaseLost, NoSlotAvailable
from warmbuild.pool.ephemeral import EphemeralSettings
from warmbuild.pool.leases import HolderInfo
from warmbuild.pool.placement import PlacementRequest
from warmbuild.pool.workload import explicit_key
from warmbuild.scheduler.client import (
    SchedulerClient,
    SchedulerError,
    SchedulerKeeper,
    SchedulerOptions,
    SchedulerUnavailable,
    UntrustedRefused,
    grant_from_answer,
    parse_scheduler_urls,
    scheduler_options,
    scheduler_token,
)

A, B = "https://sched-a.test:8443", "https://sched-b.test:8443"
GRANTED = {
    "decision": "granted",
    "waited_seconds": 0.01,
    "reason": "affine builder builders-1",
    "lease": {
        "name": "builders-1-slot-0",
        "namespace": "warmbuild",
        "holder": "h/1/abc@system:serviceaccount:ci:runner",
        "transitions": 7,
        "fencing_token": "builders-1-slot-0/7",
        "resource_version": "42",
        "duration_seconds": 15,
        "acquired_at": "2026-01-02T03:04:05.000006+00:00",
        "release_token": "secret-release-token",
    },
    "builder": {"name": "builders-1", "uid": "u-1", "address": "tcp://10.0.0.7:1234", "slots": 2},
    "path": "warm",
    "affine": True,
    "affine_builder": "builders-1",
}


class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_client(*urls: str, fake: FakeTime | None = None, **options) -> SchedulerClient:
    fake = fake or FakeTime()
    client = SchedulerClient(SchedulerOptions(urls=urls, token="tok", **options), sleep=fake.sleep, clock=fake.clock)
    client._current = 0  # deterministic: start at the first replica
    return client


def request(max_wait: float = 60, fallback: str = "wait", untrusted: bool = False) -> PlacementRequest:
    return PlacementRequest(
        "warmbuild",
        "default",
        explicit_key("repo|Dockerfile"),
        HolderInfo("host/1/x", run_url="https://ci/run/1"),
        max_wait_seconds=max_wait,
        lease_seconds=15,
        fallback=fallback,
        untrusted=untrusted,
    )


def acquire_url(base: str) -> str:
    return f"{base}/v1/pools/default/acquire"


@responses.activate
def test_a_grant_becomes_a_grant_and_the_request_carries_the_token_and_the_wait():
    responses.post(acquire_url(A), json=GRANTED)
    grant = make_client(A).acquire(request())
    assert grant.path == "warm" and grant.affine and grant.builder.address == "tcp://10.0.0.7:1234"
    assert grant.lease.fencing_token == "builders-1-slot-0/7" and grant.lease.duration_seconds == 15
    assert grant.lease.release_token == "secret-release-token"
    assert "secret-release-token" not in repr(grant)  # a grant may be logged; its token never
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == "Bearer tok"
    body = json.loads(sent.body)
    assert body["max_wait_seconds"] == 60 and body["waited_seconds"] == 0 and body["holder_hint"] == "host/1/x"
    assert body["fallback"] == "wait" and body["run_url"] == "https://ci/run/1"


@responses.activate
def test_wait_answers_are_polled_again_with_the_time_waited_so_far():
    fake = FakeTime()
    lines: list[str] = []

    def answer(req):
        fake.now += 20  # each long-poll takes its server-side 20 s
        if len(responses.calls) < 2:
            return 200, {}, json.dumps({"decision": "wait", "waited_seconds": 20, "reason": "affine builder b-1 busy"})
        return 200, {}, json.dumps(GRANTED)

    responses.add_callback(responses.POST, acquire_url(A), callback=answer)
    grant = make_client(A, fake=fake).acquire(request(), log=lines.append)
    waited = [json.loads(c.request.body)["waited_seconds"] for c in responses.calls]
    assert waited == [0, 20, 40]
    assert grant.waited_seconds == 60
    assert len(lines) == 1 and lines[0].startswith("affine builder b-1 busy; waiting through the scheduler")


@responses.activate
def test_fallback_is_no_slot_with_the_schedulers_reason():
    responses.post(
        acquire_url(A),
        json={"decision": "fallback", "waited_seconds": 60, "reason": "all warm slots stayed busy for 60s"},
    )
    with pytest.raises(NoSlotAvailable, match="the scheduler found no slot: all warm slots stayed busy for 60s"):
        make_client(A).acquire(request())


@responses.activate
def test_an_unknown_decision_says_upgrade():
    responses.post(acquire_url(A), json={"decision": "ephemeral", "waited_seconds": 0, "reason": "r"})
    with pytest.raises(
        SchedulerError, match="decision 'ephemeral', which this warmbuild does not know.*upgrade warmbuild"
    ):
        make_client(A).acquire(request())


@responses.activate
def test_a_5xx_goes_to_the_next_replica():
    responses.post(acquire_url(A), json={"error": "cannot reach the Kubernetes API"}, status=503)
    responses.post(acquire_url(B), json=GRANTED)
    client = make_client(A, B)
    assert client.acquire(request()).lease.name == "builders-1-slot-0"
    assert [c.request.url for c in responses.calls] == [acquire_url(A), acquire_url(B)]
    client.acquire(request())  # sticks with the replica that answered
    assert responses.calls[-1].request.url == acquire_url(B)


@responses.activate
def test_replicas_that_all_fail_give_one_clear_error_after_bounded_retries_with_backoff():
    fake = FakeTime()
    responses.post(acquire_url(A), body="<html>bad gateway</html>", status=502)
    responses.post(acquire_url(B), body=requests.exceptions.ConnectionError("Connection refused"))
    with pytest.raises(SchedulerUnavailable) as caught:
        make_client(A, B, fake=fake).acquire(request())
    assert len(responses.calls) == 6  # 3 rounds over 2 replicas
    assert fake.sleeps == [0.25, 0.5]  # backoff between rounds, none after the last
    message = caught.value.message
    assert message.startswith(
        "no scheduler replica answered (2 URLs, 6 attempts); last: cannot connect to https://sched-b.test:8443"
    )
    assert caught.value.exit_code == 6 and "\n" not in message


@responses.activate
def test_connection_refused_on_the_only_replica():
    responses.post(acquire_url(A), body=requests.exceptions.ConnectionError("[Errno 111] Connection refused"))
    with pytest.raises(
        SchedulerUnavailable,
        match=r"\(1 URL, 3 attempts\); last: cannot connect to https://sched-a.test:8443: \[Errno 111\]",
    ):
        make_client(A).acquire(request())


@responses.activate
def test_a_timeout_is_retried_and_named_with_its_limit():
    responses.post(acquire_url(A), body=requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(SchedulerUnavailable, match=r"last: https://sched-a.test:8443 did not answer within 30s"):
        make_client(A, poll_seconds=20, read_timeout=10).acquire(request())
    assert len(responses.calls) == 3


@responses.activate
def test_malformed_json_is_retried_then_reported():
    responses.post(acquire_url(A), body="{not json", status=200)
    responses.post(acquire_url(B), body="[1, 2]", status=200)
    with pytest.raises(
        SchedulerUnavailable, match=r"last: https://sched-b.test:8443 answered 200 with malformed JSON: \[1, 2\]"
    ):
        make_client(A, B).acquire(request())
    assert len(responses.calls) == 6


@responses.activate
def test_a_grant_missing_fields_is_a_clear_error():
    responses.post(acquire_url(A), json={"decision": "granted", "waited_seconds": 0, "reason": "x", "path": "warm"})
    with pytest.raises(SchedulerError, match="the scheduler's grant is incomplete \\(KeyError: 'lease'\\)"):
        make_client(A).acquire(request())


@responses.activate
@pytest.mark.parametrize(
    "status, text",
    [(401, "did not accept the token \\(401\\): the token expired"), (403, "refused \\(403\\): the token expired")],
)
def test_401_and_403_are_not_retried(status, text):
    responses.post(acquire_url(A), json={"error": "the token expired"}, status=status)
    responses.post(acquire_url(B), json=GRANTED)
    with pytest.raises(SchedulerError, match=text):
        make_client(A, B).acquire(request())
    assert len(responses.calls) == 1


@responses.activate
def test_an_unverifiable_certificate_stops_at_once_and_names_the_flag():
    responses.post(
        acquire_url(A), body=requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    )
    with pytest.raises(SchedulerError, match="cannot verify the scheduler's certificate .*--scheduler-ca"):
        make_client(A, B).acquire(request())
    assert len(responses.calls) == 1


@responses.activate
def test_an_untrusted_build_says_so_and_gets_the_ephemeral_builder_the_scheduler_started():
    answer = {
        **GRANTED,
        "path": "ephemeral",
        "affine": False,
        "untrusted": True,
        "lease": {**GRANTED["lease"], "name": "warmbuild-default-ephemeral-0123abcd"},
        "builder": {"name": "warmbuild-default-ephemeral-0123abcd", "address": "", "server_name": "pod.name"},
        "run_tls": {"server_name": "pod.name", "ca": "CA", "cert": "CERT", "key": "KEY"},
    }
    responses.post(acquire_url(A), json=answer)
    client = make_client(A)
    grant = client.acquire(request(untrusted=True))
    sent = json.loads(responses.calls[-1].request.body)
    assert sent["untrusted"] is True and sent["key_path"] == "repo|Dockerfile"
    assert grant.path == "ephemeral" and grant.untrusted and grant.run_tls.key_pem == b"KEY"
    assert "KEY" not in repr(grant)
    status_url = f"{A}/v1/slots/warmbuild-default-ephemeral-0123abcd/ephemeral"
    responses.post(status_url, json={"ready": False, "address": "", "failed": ""})
    responses.post(status_url, json={"ready": True, "address": "tcp://10.0.0.9:1234", "failed": ""})
    ready = client.wait_ready(client.start_ephemeral(request(), grant, EphemeralSettings(), None), EphemeralSettings())
    assert ready.builder.address == "tcp://10.0.0.9:1234"
    body = json.loads(responses.calls[-1].request.body)
    assert body["release_token"] == "secret-release-token" and body["holder"] == grant.lease.holder


@responses.activate
def test_auto_and_ephemeral_fallbacks_are_sent_as_wait_and_fail_as_fail():
    responses.post(acquire_url(A), json=GRANTED)
    for fallback, sent in (("auto", "wait"), ("ephemeral", "wait"), ("fail", "fail"), ("wait", "wait")):
        make_client(A).acquire(request(fallback=fallback))
        assert json.loads(responses.calls[-1].request.body)["fallback"] == sent


@responses.activate
def test_renew_409_is_lease_lost_and_release_reports_the_hold():
    fake = FakeTime()
    client = make_client(A, fake=fake)
    responses.post(acquire_url(A), json=GRANTED)
    grant = client.acquire(request())
    renew_url = f"{A}/v1/slots/builders-1-slot-0/renew"
    responses.post(
        renew_url, json={"lease": "builders-1-slot-0", "fencing_token": "builders-1-slot-0/7", "resource_version": "43"}
    )
    assert client.renew(grant.lease).resource_version == "43"
    sent = json.loads(responses.calls[-1].request.body)
    assert sent.pop("csr").startswith("-----BEGIN CERTIFICATE REQUEST-----")  # a fresh grant certificate, if any
    assert sent == {"holder": GRANTED["lease"]["holder"], "release_token": "secret-release-token", "transitions": 7}
    responses.replace(
        responses.POST, renew_url, json={"error": "slot lease builders-1-slot-0 is now held by usurper"}, status=409
    )
    with pytest.raises(LeaseLost, match="slot lease builders-1-slot-0 is now held by usurper"):
        client.renew(grant.lease)
    fake.now += 42
    responses.post(f"{A}/v1/slots/builders-1-slot-0/release", json={"released": True})
    assert client.release(grant) is True
    assert json.loads(responses.calls[-1].request.body) == {
        "holder": GRANTED["lease"]["holder"],
        "release_token": "secret-release-token",
        "pool": "default",
        "path": "warm",
        "held_seconds": 42.0,
    }


@responses.activate
def test_the_keeper_stops_the_build_once_when_the_slot_is_lost():
    responses.post(acquire_url(A), json=dict(GRANTED, lease=dict(GRANTED["lease"], duration_seconds=1)))
    responses.post(
        f"{A}/v1/slots/builders-1-slot-0/renew",
        json={"error": "slot lease builders-1-slot-0 is now held by x"},
        status=409,
    )
    client = SchedulerClient(SchedulerOptions(urls=(A,), token="tok"))
    grant = client.acquire(request())
    lost = threading.Event()
    reasons: list[str] = []
    keeper = client.keep(grant, on_lost=lambda reason: (reasons.append(reason), lost.set()))
    assert lost.wait(5)
    keeper.stop()
    assert reasons == ["slot lease builders-1-slot-0 is now held by x"] and keeper.lost_reason == reasons[0]


def scheduler_down_between(fake: FakeTime, start: float, end: float, after: tuple[int, dict]):
    """The renew endpoint of both replicas: renews until `start`, is unreachable until `end`, then answers `after`."""
    calls = {"refused": 0}

    def answer(_request):
        if start <= fake.now < end:
            calls["refused"] += 1
            raise requests.exceptions.ConnectionError("connection refused")
        status, document = after if fake.now >= end else (200, {"resource_version": "50"})
        return status, {}, json.dumps(document)

    for base in (A, B):
        responses.add_callback(responses.POST, f"{base}/v1/slots/builders-1-slot-0/renew", callback=answer)
    return calls


def fake_keeper(client: SchedulerClient, fake: FakeTime, lease, until: float):
    """The scheduler client's keeper on fake time (moved by its waits), run in this thread."""
    reasons: list[str] = []
    lines: list[str] = []

    def wait(seconds: float) -> bool:
        fake.now += seconds
        return fake.now >= until

    keeper = SchedulerKeeper(client, lease, reasons.append, clock=fake.clock, log=lines.append, wait=wait)
    return keeper, reasons, lines


@responses.activate
def test_a_scheduler_unreachable_for_20s_does_not_abort_the_build():
    fake = FakeTime()
    client = make_client(A, B, fake=fake)
    responses.post(acquire_url(A), json=dict(GRANTED, lease=dict(GRANTED["lease"], duration_seconds=6)))
    grant = client.acquire(request())
    start = fake.now
    calls = scheduler_down_between(fake, start + 3, start + 23, (200, {"resource_version": "99"}))
    keeper, reasons, lines = fake_keeper(client, fake, grant.lease, until=start + 40)
    keeper.run()
    assert reasons == [] and keeper.lost_reason is None
    assert calls["refused"] >= 10 and keeper.held.resource_version == "99"
    assert len(lines) == 2 and "no scheduler replica answered" in lines[0] and "the build goes on" in lines[0]
    assert lines[1].startswith("renewed slot lease builders-1-slot-0 again after")


@responses.activate
def test_a_409_after_a_scheduler_outage_aborts_the_build_once():
    fake = FakeTime()
    client = make_client(A, B, fake=fake)
    responses.post(acquire_url(A), json=dict(GRANTED, lease=dict(GRANTED["lease"], duration_seconds=6)))
    grant = client.acquire(request())
    start = fake.now
    scheduler_down_between(
        fake, start + 3, start + 23, (409, {"error": "slot lease builders-1-slot-0 is now held by usurper"})
    )
    keeper, reasons, lines = fake_keeper(client, fake, grant.lease, until=start + 60)
    keeper.run()
    assert reasons == ["slot lease builders-1-slot-0 is now held by usurper"]
    assert fake.now < start + 23 + 2 + 1, "noticed at the first renewal after the scheduler answered again"
    assert len(lines) == 1


def test_a_renew_through_a_hung_scheduler_ends_within_its_budget():
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]  # accept, never answer
    try:
        urls = tuple(f"http://127.0.0.1:{server.getsockname()[1]}" for server in silent)
        client = SchedulerClient(SchedulerOptions(urls=urls, token="tok"))  # real sleep between rounds
        lease = grant_from_answer(GRANTED, 0).lease
        started = time.monotonic()
        with pytest.raises(SchedulerUnavailable, match="no scheduler replica answered within 1.5s"):
            client.renew(lease, timeout=1.5)
        elapsed = time.monotonic() - started
    finally:
        for server in silent:
            server.close()
    assert elapsed < 1.5 + 0.2, f"a renew with a 1.5 s budget took {elapsed:.2f}s"


def test_urls_must_be_https_and_may_list_replicas():
    assert parse_scheduler_urls(f"{A}/, {B}") == (A, B)
    for bad in ("http://sched:8080", "sched:8443", " , "):
        with pytest.raises(InputError):
            parse_scheduler_urls(bad)


def test_the_token_comes_from_the_flag_env_or_a_file(tmp_path):
    assert scheduler_token("flag", None, {"WARMBUILD_SCHEDULER_TOKEN": "env"}) == "flag"
    assert scheduler_token(None, None, {"WARMBUILD_SCHEDULER_TOKEN": "env\n"}) == "env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert scheduler_token(None, str(token_file), {}) == "from-file"
    assert scheduler_token(None, None, {"WARMBUILD_SCHEDULER_TOKEN_FILE": str(token_file)}) == "from-file"
    with pytest.raises(InputError, match="no token for the scheduler"):
        scheduler_token(None, None, {})
    with pytest.raises(InputError, match="cannot read the scheduler token file"):
        scheduler_token(None, str(tmp_path / "missing"), {})


def test_cli_rejects_a_plain_http_scheduler_in_one_line(tmp_path, monkeypatch, capsys):
    for name in ("WARMBUILD_BUILDER", "KUBECONFIG", "WARMBUILD_SCHEDULER", "GITHUB_ACTIONS", "GITLAB_CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    code = cli.main(
        ["build", str(tmp_path), "--pool", "default", "--scheduler", "http://sched:8080", "--scheduler-token", "t"]
    )
    assert code == 2
    assert (
        capsys.readouterr().err.strip()
        == "warmbuild: error: --scheduler URL 'http://sched:8080' must be https://HOST[:PORT]"
    )


@responses.activate
def test_a_token_file_is_read_again_for_every_request(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    client = SchedulerClient(scheduler_options(A, None, str(token_file), None, environ={}))
    responses.post(acquire_url(A), json=GRANTED)
    client.acquire(request())
    token_file.write_text("rotated\n")
    client.acquire(request())
    assert [c.request.headers["Authorization"] for c in responses.calls] == ["Bearer first", "Bearer rotated"]


@responses.activate
def test_an_untrusted_caller_refused_by_the_scheduler_is_no_slot_exit_7():
    message = "system:serviceaccount:ci:forks is an untrusted caller (its grant says trusted: false): ..."
    responses.post(acquire_url(A), json={"error": message, "code": "untrusted"}, status=403)
    with pytest.raises(UntrustedRefused, match="refused a warm slot: .* untrusted caller") as caught:
        make_client(A).acquire(request())
    assert caught.value.exit_code == 7 and len(responses.calls) == 1


@responses.activate
def test_a_429_is_waited_out_for_its_retry_after_then_polled_again():
    fake = FakeTime()
    responses.post(
        acquire_url(A),
        json={"error": "ci has 16 requests running", "code": "limit"},
        status=429,
        headers={"Retry-After": "3"},
    )
    responses.post(acquire_url(A), json=GRANTED)
    lines: list[str] = []
    grant = make_client(A, fake=fake).acquire(request(), log=lines.append)
    assert grant.lease.name == "builders-1-slot-0"
    assert fake.sleeps == [3.0] and len(responses.calls) == 2
    assert lines and "at its limit (429)" in lines[0]


def test_release_without_a_token_is_one_clear_line():
    with pytest.raises(SchedulerError, match="no release token for slot s-0"):
        make_client(A).release_lease("s-0", "h/1@u", "")


def test_a_projected_scheduler_token_is_preferred_in_a_pod(tmp_path, monkeypatch):
    from warmbuild.scheduler import client as client_module

    projected = tmp_path / "token"
    projected.write_text("for-the-scheduler\n")
    monkeypatch.setattr(client_module, "PROJECTED_TOKEN", projected)
    assert scheduler_token(None, None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "for-the-scheduler"


def test_the_state_file_keeps_the_release_token_for_the_post_step_readable_by_its_owner_only(tmp_path):
    import stat

    from warmbuild.pool.state import ReleaseState, read_state, write_state

    path = tmp_path / "state" / "warmbuild-state.json"
    state = ReleaseState("warmbuild", "b-1-slot-0", "h/1@ci", release_token="secret-release-token")
    write_state(path, state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_state(path) == state and read_state(path).release_token == "secret-release-token"
    assert "secret-release-token" not in repr(state)


WAIT = {"decision": "wait", "waited_seconds": 20, "reason": "affine builder b-1 busy"}


@responses.activate
def test_a_replica_killed_while_a_caller_waits_on_it_costs_that_caller_no_pause():
    """Replica A dies mid-poll (its connection reset), then refuses: the poll goes to B at once."""
    fake = FakeTime()
    calls: list[str] = []

    def on_a(req):
        calls.append("A")
        fake.now += 20
        if calls.count("A") == 1:
            return 200, {}, json.dumps(WAIT)
        raise requests.exceptions.ConnectionError("Connection aborted: ConnectionResetError(104)")

    def on_b(req):
        calls.append("B")
        return 200, {}, json.dumps(GRANTED)

    responses.add_callback(responses.POST, acquire_url(A), callback=on_a)
    responses.add_callback(responses.POST, acquire_url(B), callback=on_b)
    grant = make_client(A, B, fake=fake).acquire(request())
    assert calls == ["A", "A", "B"] and grant.lease.name == "builders-1-slot-0"
    assert fake.sleeps == [], "failed over without a backoff: well within 2 s"
    assert json.loads(responses.calls[-1].request.body)["waited_seconds"] == 20  # the broken poll, re-sent


def test_the_connect_timeout_keeps_a_failover_to_a_vanished_replica_under_2s():
    client = SchedulerClient(SchedulerOptions(urls=(A, B), token="tok"))
    assert client.options.connect_timeout < 2.0


@responses.activate
def test_every_replica_down_after_answering_is_waited_through_within_max_wait():
    fake = FakeTime()
    lines: list[str] = []
    state = {"polls": 0}

    def on_any(req):
        state["polls"] += 1
        if state["polls"] == 1:
            return 200, {}, json.dumps(WAIT)
        if fake.now < 130:  # both replicas restart for ~30 s
            raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")
        return 200, {}, json.dumps(GRANTED)

    fake.now = 100.0
    responses.add_callback(responses.POST, acquire_url(A), callback=on_any)
    responses.add_callback(responses.POST, acquire_url(B), callback=on_any)
    grant = make_client(A, B, fake=fake).acquire(request(max_wait=60), log=lines.append)
    assert grant.lease.name == "builders-1-slot-0"
    outage = [line for line in lines if "no scheduler replica answered" in line]
    assert len(outage) == 1 and re.search(r"asking again every 1s for up to 5\ds \(--max-wait\)$", outage[0]), lines


@responses.activate
def test_every_replica_down_past_max_wait_is_the_one_clear_error():
    fake = FakeTime()
    state = {"polls": 0}

    def on_any(req):
        state["polls"] += 1
        if state["polls"] == 1:
            return 200, {}, json.dumps(WAIT)
        raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")

    responses.add_callback(responses.POST, acquire_url(A), callback=on_any)
    responses.add_callback(responses.POST, acquire_url(B), callback=on_any)
    with pytest.raises(SchedulerUnavailable, match=r"^no scheduler replica answered \(2 URLs, 6 attempts\)") as caught:
        make_client(A, B, fake=fake).acquire(request(max_wait=10))
    assert caught.value.exit_code == 6 and "\n" not in caught.value.message
    assert 10 <= fake.now - 100 < 13


@responses.activate
def test_a_503_from_the_first_request_is_an_answer_and_waited_through():
    """The scheduler is there but the API server behind it restarts: it answers 503 until it is back."""
    fake = FakeTime()
    lines: list[str] = []

    def on_any(req):
        if fake.now < 115:
            return 503, {}, json.dumps({"error": "cannot review the token: cannot reach the Kubernetes API"})
        return 200, {}, json.dumps(GRANTED)

    responses.add_callback(responses.POST, acquire_url(A), callback=on_any)
    responses.add_callback(responses.POST, acquire_url(B), callback=on_any)
    grant = make_client(A, B, fake=fake).acquire(request(max_wait=60), log=lines.append)
    assert grant.lease.name == "builders-1-slot-0" and 115 <= fake.now < 118
    assert len(lines) == 1 and "answered 503: cannot review the token" in lines[0], lines


@responses.activate
def test_on_github_the_scheduler_gets_the_jobs_oidc_token_re_minted_for_each_request():
    responses.get("https://token.test/request", json={"value": "x.eyJleHAiOiAxfQ.y"})  # exp long past: re-mint
    environ = {
        "WARMBUILD_SCHEDULER_OIDC_AUDIENCE": "warmbuild-scheduler",
        "ACTIONS_ID_TOKEN_REQUEST_URL": "https://token.test/request",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-token",
    }
    options = scheduler_options(A, None, None, None, environ)
    assert options.token_source is not None and options.token_file is None
    assert responses.calls[0].request.params == {"audience": "warmbuild-scheduler"}
    options.token_source()
    assert len(responses.calls) == 2  # expired: minted again
    # Without the job's permission: one line naming it.
    with pytest.raises(ClusterError, match="id-token: write"):
        scheduler_options(A, None, None, None, {"WARMBUILD_SCHEDULER_OIDC_AUDIENCE": "a"})
    # A token given outright wins.
    assert scheduler_options(A, "given", None, None, environ).token == "given"
