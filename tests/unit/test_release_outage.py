"""The slot or ephemeral builder is given back through a short API-server outage, not left behind."""

from __future__ import annotations

import io
from datetime import datetime, timezone

from warmbuild import pipeline, signals
from warmbuild.errors import ClusterRefused, ClusterUnavailable
from warmbuild.pool.leases import SlotLease
from warmbuild.pool.membership import Builder
from warmbuild.pool.placement import Grant

POD = "warmbuild-default-ephemeral-0123abcd"
GRANT = Grant(
    path="ephemeral",
    lease=SlotLease("ns", POD, POD, "h/1/x", 1, "7", 15, datetime(2026, 1, 1, tzinfo=timezone.utc)),
    builder=Builder(POD, "uid", "tcp://127.0.0.13:1234", 1),
    affine=False,
    affine_builder=None,
    waited_seconds=0.0,
    reason="untrusted",
)


class Broker:
    def __init__(self, failures: int, refusals: int = 0, refused_first: bool = False):
        self.failures, self.refusals, self.refused_first = failures, refusals, refused_first
        self.calls = 0

    def release(self, grant):
        self.calls += 1
        if self.refused_first and self.calls == 1:
            raise ClusterRefused("missing permission: delete pods in namespace ns (test)")
        if self.calls <= self.failures:
            raise ClusterUnavailable("cannot reach the Kubernetes API at https://127.0.0.1:6443 (test): refused")
        if self.calls <= self.failures + self.refusals:
            raise ClusterRefused("missing permission: delete pods in namespace ns (test)")
        return True


def test_a_release_during_an_api_restart_is_asked_again_until_it_works(tmp_path, monkeypatch):
    naps: list[float] = []
    monkeypatch.setattr(pipeline.time, "sleep", naps.append)
    state = tmp_path / "state.json"
    state.write_text("{}")
    log = io.StringIO()
    broker = Broker(failures=5)
    pipeline._give_back(broker, GRANT, state, log)
    assert broker.calls == 6 and naps == [1.0] * 5 and not state.exists()
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and "asking again every second for up to 30s" in lines[0], lines


def test_a_waiting_cancel_signal_stops_the_retries_and_the_post_step_is_left_to_do_it(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.time, "sleep", lambda _s: None)
    monkeypatch.setattr(signals, "_pending", [15])
    state = tmp_path / "state.json"
    state.write_text("{}")
    log = io.StringIO()
    broker = Broker(failures=100)
    pipeline._give_back(broker, GRANT, state, log)
    assert broker.calls == 1 and state.exists()
    assert log.getvalue().startswith(f"warmbuild: warning: could not delete ephemeral builder {POD}")


def test_refusals_right_after_the_outage_are_the_restarted_authorizer_catching_up(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.time, "sleep", lambda _s: None)
    state = tmp_path / "state.json"
    state.write_text("{}")
    broker = Broker(failures=3, refusals=2)
    pipeline._give_back(broker, GRANT, state, io.StringIO())
    assert broker.calls == 6 and not state.exists()


def test_a_refusal_without_an_outage_is_final(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.time, "sleep", lambda _s: None)
    state = tmp_path / "state.json"
    state.write_text("{}")
    log = io.StringIO()
    broker = Broker(failures=0, refused_first=True)
    pipeline._give_back(broker, GRANT, state, log)
    assert broker.calls == 1 and state.exists() and "missing permission: delete pods" in log.getvalue()
