"""`warmbuild drain`: which slots count as held, and when the drain returns (no cluster needed)."""

from datetime import datetime, timedelta, timezone

import pytest

from warmbuild.cli import main
from warmbuild.errors import ClusterError
from warmbuild.kube.client import KubeNotFound, KubeResponse, format_micro_time
from warmbuild.kube.names import BUILDER_LABEL, RUN_URL_ANNOTATION
from warmbuild.kube.views import parse_lease
from warmbuild.pool.drain import DrainTimedOut, drain_builder, held_slots

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
POD = "warmbuild-builder-2"
UID = "uid-current"


def lease(
    slot: int,
    holder: str | None,
    renewed: datetime | None = NOW,
    duration: int = 15,
    owner: str = UID,
    run_url: str = "",
) -> dict:
    spec = {"leaseDurationSeconds": duration, "leaseTransitions": 1}
    if holder:
        spec["holderIdentity"] = holder
    if renewed is not None:
        spec["renewTime"] = format_micro_time(renewed)
    return {
        "metadata": {
            "name": f"{POD}-slot-{slot}",
            "labels": {BUILDER_LABEL: POD},
            "annotations": {RUN_URL_ANNOTATION: run_url} if run_url else {},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": POD, "uid": owner}],
        },
        "spec": spec,
    }


def test_held_means_a_holder_whose_lease_has_not_expired_by_server_time():
    leases = [
        lease(0, "job-a", renewed=NOW - timedelta(seconds=5)),  # held: expires in 10 s
        lease(1, None),  # released
        lease(2, "job-c", renewed=NOW - timedelta(seconds=20)),  # expired 5 s ago: its holder is gone
        lease(3, "job-d", owner="uid-of-an-earlier-pod"),  # not this pod's: ignored
    ]
    held = held_slots([parse_lease(body) for body in leases], UID, NOW)
    assert [slot.name for slot in held] == [f"{POD}-slot-0"]
    assert held[0].holder == "job-a"
    assert held[0].expires == NOW + timedelta(seconds=10)


class FakeClient:
    """Answers the drain's three requests; `script(t)` gives the Leases at monotonic time t."""

    def __init__(self, clock, script, pod_exists=True, patch_error=None, list_error_until=None):
        self.clock = clock
        self.script = script
        self.pod_exists = pod_exists
        self.patch_error = patch_error
        self.list_error_until = list_error_until
        self.requests = []

    def server_now(self) -> datetime:
        return NOW + timedelta(seconds=self.clock.now)

    def request(self, method, path, body=None, query=None, content_type="application/json"):
        self.requests.append((method, path, body, query, content_type))
        if path.endswith(f"/pods/{POD}"):
            if not self.pod_exists:
                raise KubeNotFound("not found")
            if method == "PATCH" and self.patch_error:
                raise self.patch_error
            return KubeResponse(200, {"metadata": {"name": POD, "uid": UID}}, self.server_now())
        if path.endswith("/leases"):
            if self.list_error_until is not None and self.clock.now < self.list_error_until:
                raise ClusterError("cannot reach the Kubernetes API")
            return KubeResponse(200, {"items": self.script(self.clock.now)}, self.server_now())
        raise AssertionError(f"unexpected request {method} {path}")


def run(client, clock, **kwargs):
    lines = []
    kwargs.setdefault("timeout", 60)
    kwargs.setdefault("settle", 3)
    kwargs.setdefault("poll", 1)
    result = drain_builder(
        client, "pool-ns", POD, log=lines.append, sleep=clock.sleep, monotonic=clock.monotonic, **kwargs
    )
    return result, lines


def test_marks_the_pod_draining_then_waits_until_the_held_slot_is_released(clock):
    # slot-0 is held until t=7 (the build finishes and releases it), slot-1 is free throughout.
    client = FakeClient(
        clock, lambda t: [lease(0, "job-a" if t < 7 else None, renewed=NOW + timedelta(seconds=t)), lease(1, None)]
    )
    result, lines = run(client, clock)
    method, path, body, _query, content_type = client.requests[0]
    assert (method, path) == ("PATCH", f"/api/v1/namespaces/pool-ns/pods/{POD}")
    assert body == {"metadata": {"annotations": {"warmbuild.dev/draining": "true"}}}
    assert content_type == "application/merge-patch+json"
    lists = [r for r in client.requests if r[1].endswith("/leases")]
    assert lists[0][3] == {"labelSelector": f"warmbuild.dev/builder={POD}"}
    assert result.marked and result.slots_seen_held == (f"{POD}-slot-0",)
    assert 7 <= result.waited_seconds < 8.5
    assert any("waiting for 1 slot(s)" in line and "slot-0" in line for line in lines)
    assert lines[-1].startswith("all slots released")


def test_an_expired_lease_counts_as_free_by_the_servers_clock(clock):
    # The holder died at t=0 and never renews: free once renewTime + 15 s has passed on the server.
    client = FakeClient(clock, lambda t: [lease(0, "crashed-job", renewed=NOW, duration=15)])
    result, _lines = run(client, clock)
    assert 15 <= result.waited_seconds <= 16.5


def test_an_idle_builder_still_waits_for_the_settle_time(clock):
    client = FakeClient(clock, lambda t: [lease(0, None)])
    result, lines = run(client, clock, settle=3)
    assert 3 <= result.waited_seconds < 3.5
    assert result.slots_seen_held == ()
    assert lines[-1] == "no slot in use; buildkitd may stop"


def test_a_gone_pod_has_nothing_to_drain(clock):
    client = FakeClient(clock, lambda t: [], pod_exists=False)
    result, lines = run(client, clock)
    assert not result.marked and result.waited_seconds == 0
    assert "gone already" in lines[0]


def test_without_patch_permission_it_still_waits_for_the_slots(clock):
    client = FakeClient(
        clock,
        lambda t: [lease(0, "job" if t < 5 else None, renewed=NOW + timedelta(seconds=t))],
        patch_error=ClusterError("missing permission: patch pods"),
    )
    result, lines = run(client, clock)
    assert not result.marked
    assert result.waited_seconds >= 5
    assert "could not mark" in lines[0]


def test_times_out_naming_the_slots_still_held(clock):
    client = FakeClient(
        clock, lambda t: [lease(0, "job-a", renewed=NOW + timedelta(seconds=t), run_url="https://ci.example/run/7")]
    )
    with pytest.raises(DrainTimedOut) as error:
        run(client, clock, timeout=20)
    assert error.value.exit_code == 10
    assert f"{POD}-slot-0 (https://ci.example/run/7)" in error.value.message
    assert 20 <= clock.now < 21.5


def test_gives_up_when_the_leases_stay_unreadable(clock):
    client = FakeClient(clock, lambda t: [], list_error_until=10_000)
    with pytest.raises(DrainTimedOut) as error:
        run(client, clock, api_grace=15)
    assert "could not be read" in error.value.message
    assert 15 <= clock.now < 17


def test_a_short_api_outage_is_waited_out(clock):
    client = FakeClient(clock, lambda t: [lease(0, None)], list_error_until=5)
    result, lines = run(client, clock, api_grace=15)
    assert 5 <= result.waited_seconds < 6.5
    assert sum("could not list" in line for line in lines) == 1  # said once, not every poll


def test_cli_needs_the_pod_name(monkeypatch, capsys):
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert main(["drain"]) == 2
    assert "POD_NAME and POD_NAMESPACE" in capsys.readouterr().err


def test_revoked_credentials_end_the_wait_at_once(clock):
    client = FakeClient(clock, lambda t: [])
    revoked = ClusterError(
        "the Kubernetes API at https://k8s rejected the credentials (in-cluster service account): "
        "the token is missing, expired or not trusted"
    )

    def refuse(*args, **kwargs):
        raise revoked

    client.request = refuse
    result, lines = run(client, clock)
    assert clock.now < 1 and not result.marked
    assert "credentials were revoked" in lines[-1]
