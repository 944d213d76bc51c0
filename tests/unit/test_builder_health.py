"""Unhealthy builders leave the rotation: the mark on a builder's health Lease (pool.health), the
cool-down and the skip (policy.out_of_rotation, placement), `pool status`, and the way back."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from warmbuild.errors import NoSlotAvailable
from warmbuild.kube.names import UNHEALTHY_ANNOTATION, UNHEALTHY_SINCE_ANNOTATION, health_lease_name
from warmbuild.pool.health import clear_unhealthy, health_marks, mark_unhealthy
from warmbuild.pool.leases import HolderInfo, list_pool_leases, try_acquire_slot
from warmbuild.pool.membership import Builder
from warmbuild.pool.placement import PlacementRequest, acquire_build_slot, in_flight_by_builder
from warmbuild.pool.policy import (
    MARK_CLOCK_SKEW_SECONDS,
    UNHEALTHY_COOLDOWN_SECONDS,
    HealthMark,
    cooling_down,
    out_of_rotation,
)
from warmbuild.pool.workload import WorkloadKey

NS, POOL = "warmbuild", "default"
SERVER_EPOCH = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)  # the fake API server's clock (conftest)
B0 = Builder("builders-0", "uid-0", "tcp://127.0.0.10:1234", 2)
B1 = Builder("builders-1", "uid-1", "tcp://127.0.0.11:1234", 2)


# --- the policy (pure) ---------------------------------------------------------------------------


def test_a_mark_keeps_its_builder_out_for_the_cool_down_then_lets_it_back():
    mark = HealthMark("b", "disk full", SERVER_EPOCH)
    assert cooling_down(mark, SERVER_EPOCH + timedelta(seconds=1))
    assert cooling_down(mark, SERVER_EPOCH + timedelta(seconds=UNHEALTHY_COOLDOWN_SECONDS - 1))
    assert not cooling_down(mark, SERVER_EPOCH + timedelta(seconds=UNHEALTHY_COOLDOWN_SECONDS + 1))


def test_a_mark_dated_in_the_future_is_ignored_so_no_writer_keeps_a_builder_out_longer():
    now = SERVER_EPOCH
    assert cooling_down(HealthMark("b", "x", now + timedelta(seconds=MARK_CLOCK_SKEW_SECONDS - 1)), now)
    assert not cooling_down(HealthMark("b", "x", now + timedelta(days=365)), now)


def test_out_of_rotation_names_lost_and_cooling_builders_with_why():
    now = SERVER_EPOCH + timedelta(seconds=30)
    marks = {
        "b1": HealthMark("b1", "disk full", SERVER_EPOCH),
        "b2": HealthMark("b2", "connection lost", SERVER_EPOCH - timedelta(hours=1)),  # cooled down
    }
    skipped = out_of_rotation(["b0", "b1", "b2", "b3"], marks, avoid=["b3"], now=now)
    assert set(skipped) == {"b1", "b3"}
    assert skipped["b1"] == f"unhealthy (disk full), back in {UNHEALTHY_COOLDOWN_SECONDS - 30:.0f}s"
    assert "earlier attempt" in skipped["b3"]


# --- the health Lease ------------------------------------------------------------------------------


def test_a_mark_is_written_on_the_builders_health_lease_never_held_and_owned_by_the_pod(lease_api):
    mark_unhealthy(lease_api, NS, POOL, B0, "disk full:\nno space left", by="host/1/ab https://ci/run/1")
    lease = lease_api.get(NS, health_lease_name(B0.name))
    assert lease["metadata"]["labels"] == {"warmbuild.dev/pool": POOL, "warmbuild.dev/builder": B0.name}
    assert lease["metadata"]["ownerReferences"][0]["uid"] == B0.uid
    assert lease["metadata"]["annotations"][UNHEALTHY_ANNOTATION] == "disk full: no space left"
    assert "holderIdentity" not in lease["spec"]
    leases = list_pool_leases(lease_api, NS, POOL)
    assert in_flight_by_builder(leases, (B0,), lease_api.server_now()) == {B0.name: 0}  # not a busy slot
    marks = health_marks(leases, (B0, B1))
    assert list(marks) == [B0.name] and marks[B0.name].since == SERVER_EPOCH
    assert marks[B0.name].by == "host/1/ab https://ci/run/1"


def test_marking_again_refreshes_the_time_and_clearing_removes_the_mark(lease_api):
    mark_unhealthy(lease_api, NS, POOL, B0, "connection lost", by="a")
    lease_api.advance(200)
    mark_unhealthy(lease_api, NS, POOL, B0, "disk full", by="b")
    marks = health_marks(list_pool_leases(lease_api, NS, POOL), (B0,))
    assert marks[B0.name].reason == "disk full" and marks[B0.name].since == SERVER_EPOCH + timedelta(seconds=200)
    assert clear_unhealthy(lease_api, NS, B0) is True
    assert health_marks(list_pool_leases(lease_api, NS, POOL), (B0,)) == {}
    assert clear_unhealthy(lease_api, NS, B0) is False  # nothing left to clear
    assert clear_unhealthy(lease_api, NS, B1) is False  # never marked: no Lease at all


def test_a_mark_left_by_an_earlier_pod_of_the_same_name_does_not_count(lease_api):
    mark_unhealthy(lease_api, NS, POOL, B0, "disk full", by="a")
    recreated = Builder(B0.name, "uid-0-new", B0.address, 2)
    assert health_marks(list_pool_leases(lease_api, NS, POOL), (recreated,)) == {}
    mark_unhealthy(lease_api, NS, POOL, recreated, "connection lost", by="b")  # adopted by the new pod
    assert health_marks(list_pool_leases(lease_api, NS, POOL), (recreated,))[B0.name].reason == "connection lost"


def test_an_unreadable_since_is_no_mark(lease_api):
    mark_unhealthy(lease_api, NS, POOL, B0, "disk full", by="a")
    body = lease_api.get(NS, health_lease_name(B0.name))
    body["metadata"]["annotations"][UNHEALTHY_SINCE_ANNOTATION] = "yesterday"
    lease_api.request("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{B0.name}-health", body=body)
    assert health_marks(list_pool_leases(lease_api, NS, POOL), (B0,)) == {}


# --- placement skips what is out of the rotation ------------------------------------------------------


class NoHistory:
    def recent(self, _log=None):
        return ()


class FixedPool:
    def __init__(self, api, builders):
        self.api, self.builders = api, builders

    def read(self):
        return self.builders, list_pool_leases(self.api, NS, POOL)


def place(api, builders, key: str, avoid=(), fallback="wait", max_wait=0.0):
    request = PlacementRequest(
        NS, POOL, WorkloadKey(key, source="test"), HolderInfo("me"), max_wait, fallback=fallback, avoid=avoid
    )
    return acquire_build_slot(
        api,
        request,
        sleep=lambda _s: None,
        history=NoHistory(),
        reader=FixedPool(api, builders),
    )


def affine_of(key: str) -> tuple[Builder, Builder]:
    from warmbuild.pool.affinity import preference_order

    first = preference_order(key, {B0.name: 2, B1.name: 2})[0]
    return (B0, B1) if first == B0.name else (B1, B0)


def test_placement_skips_a_marked_affine_builder_and_takes_it_back_after_the_cool_down(lease_api):
    affine, other = affine_of("app")
    mark_unhealthy(lease_api, NS, POOL, affine, "disk full", by="a")
    lease_api.advance(10)
    grant = place(lease_api, (B0, B1), "app")
    assert grant.builder.name == other.name and not grant.marked
    lease_api.advance(UNHEALTHY_COOLDOWN_SECONDS)
    grant = place(lease_api, (B0, B1), "app")
    assert grant.builder.name == affine.name and grant.marked  # tried again; a success will clear the mark


def test_a_retry_never_goes_back_to_the_builder_it_lost(lease_api):
    affine, other = affine_of("app")
    grant = place(lease_api, (B0, B1), "app", avoid=(affine.name,))
    assert grant.builder.name == other.name


def test_with_every_builder_out_of_the_rotation_auto_goes_ephemeral_and_wait_says_why(lease_api):
    for builder in (B0, B1):
        mark_unhealthy(lease_api, NS, POOL, builder, "disk full", by="a")
    assert place(lease_api, (B0, B1), "app", fallback="auto").path == "ephemeral"
    with pytest.raises(NoSlotAvailable, match="all 2 ready builders are out of the rotation"):
        place(lease_api, (B0, B1), "app", fallback="wait")


def test_a_busy_slot_and_a_mark_live_side_by_side(lease_api):
    leases = list_pool_leases(lease_api, NS, POOL)
    assert try_acquire_slot(lease_api, NS, POOL, B0, HolderInfo("other"), leases) is not None
    mark_unhealthy(lease_api, NS, POOL, B0, "connection lost", by="a")
    leases = list_pool_leases(lease_api, NS, POOL)
    assert in_flight_by_builder(leases, (B0,), lease_api.server_now()) == {B0.name: 1}


# --- pool status ---------------------------------------------------------------------------------


def test_pool_status_shows_an_unhealthy_builder_with_reason_and_until_and_hides_the_marker_from_non_admins():
    from warmbuild.pool.status import BuilderStatus, PoolStatus, render_status_table, status_to_dict, without_holders

    now = SERVER_EPOCH + timedelta(seconds=20)
    sick = BuilderStatus(
        "builders-0",
        "tcp://127.0.0.10:1234",
        True,
        False,
        False,
        (),
        unhealthy="disk full",
        unhealthy_since=SERVER_EPOCH,
        unhealthy_until=SERVER_EPOCH + timedelta(seconds=UNHEALTHY_COOLDOWN_SECONDS),
        unhealthy_by="host/1/ab https://ci/run/1",
    )
    status = PoolStatus(
        NS, POOL, now, (sick, BuilderStatus("builders-1", "tcp://127.0.0.11:1234", True, False, False, ()))
    )
    table = render_status_table(status)
    assert "builders-0  unhealthy" in table and "builders-1  ready" in table
    assert f"skipped by placement for {UNHEALTHY_COOLDOWN_SECONDS - 20:.0f}s more" in table and "by host/1/ab" in table
    document = status_to_dict(status)["builders"][0]
    assert document["unhealthy"] == "disk full" and document["unhealthy_until"].startswith("2026-01-02T03:06:05")
    assert status_to_dict(without_holders(status))["builders"][0]["unhealthy_by"] is None


def test_the_schedulers_metrics_say_which_builders_are_out_of_the_rotation():
    pytest.importorskip("prometheus_client")
    from warmbuild.pool.status import BuilderStatus, PoolStatus
    from warmbuild.scheduler.metrics import SchedulerMetrics

    builders = (
        BuilderStatus("builders-0", None, True, False, False, (), unhealthy="connection lost"),
        BuilderStatus("builders-1", None, True, False, False, ()),
    )
    metrics = SchedulerMetrics((POOL,), lambda pool: PoolStatus(NS, pool, SERVER_EPOCH, builders))
    text = metrics.render().decode()
    assert f'warmbuild_pool_builder_unhealthy{{builder="builders-0",pool="{POOL}"}} 1.0' in text
    assert f'warmbuild_pool_builder_unhealthy{{builder="builders-1",pool="{POOL}"}} 0.0' in text
