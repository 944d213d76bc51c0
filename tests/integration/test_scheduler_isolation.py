"""Callers cannot touch each other through the scheduler, and the scheduler knows trust (issue 14).

Real `warmbuild scheduler` processes on loopback against the real control plane. Jobs A and B are
the same ServiceAccount, as with the default grant: only the release token tells them apart.
Other identities: an admin (sees holders in /status), an untrusted one (never a warm slot), and the
CI identity under tight per-identity limits. The request-rate figures of 8 waiting callers with
and without the shared pool watch are printed (`-s`) and asserted apart.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace

import pytest
import requests
from poolkit import held_slots, wait_for
from prometheus_client.parser import text_string_to_metric_families
from scheduler_harness import (
    CI_SA,
    CI_USER,
    NAMESPACE,
    SchedulerProcess,
    ci_scheduler_token,
    ensure_service_account,
    prepare,
    scheduler_token_for,
    token_for,
)

from warmbuild.errors import NoSlotAvailable
from warmbuild.pool.leases import HolderInfo
from warmbuild.pool.membership import discover_builders
from warmbuild.pool.placement import PlacementRequest
from warmbuild.pool.workload import explicit_key
from warmbuild.scheduler.client import SchedulerClient, SchedulerError, SchedulerOptions, UntrustedRefused

POOL = os.environ.get("WARMBUILD_POOL", "default")
EMPTY_POOL = "isolation-empty"  # no builders: an acquire there waits as long as it is allowed to
ADMIN_SA = "warmbuild-oncall"
FORKS_SA = "warmbuild-forks"


@pytest.fixture(scope="module")
def setup(admin, tmp_path_factory):
    for name in (ADMIN_SA, FORKS_SA):
        ensure_service_account(admin, name)
    return prepare(
        admin,
        tmp_path_factory.mktemp("isolation"),
        [
            {"pools": [POOL, EMPTY_POOL], "users": [CI_USER]},
            {"pools": [POOL], "users": [f"system:serviceaccount:{NAMESPACE}:{ADMIN_SA}"], "admin": True},
            {"pools": [POOL], "users": [f"system:serviceaccount:{NAMESPACE}:{FORKS_SA}"], "trusted": False},
        ],
        limits={"concurrent_requests": 2, "held_slots": 4},
    )


@pytest.fixture(scope="module")
def scheduler(admin, setup):
    replica = SchedulerProcess(admin, setup, "isolation", max_poll_seconds=3)
    yield replica
    replica.stop()


@pytest.fixture(autouse=True)
def pool_is_idle(ci):
    wait_for(lambda: len(discover_builders(ci, NAMESPACE, POOL)) == 3, 120, what="3 ready builders")
    wait_for(lambda: not held_slots(ci), 30, what="all slots free before the test")
    yield
    wait_for(lambda: not held_slots(ci), 30, what="all slots free after the test")


def client(scheduler, token: str | None = None, poll_seconds: float = 3.0) -> SchedulerClient:
    return SchedulerClient(
        SchedulerOptions(
            urls=(scheduler.url,),
            token=token or ci_scheduler_token(),
            ca_file=str(scheduler.setup.ca),
            poll_seconds=poll_seconds,
        )
    )


def placement(
    key: str, identity: str, pool: str = POOL, max_wait: float = 0, lease_seconds: int = 15
) -> PlacementRequest:
    return PlacementRequest(
        NAMESPACE,
        pool,
        explicit_key(key),
        HolderInfo(identity=identity, run_url=f"https://ci.example/{identity}"),
        max_wait_seconds=max_wait,
        lease_seconds=lease_seconds,
    )


def post(scheduler, path: str, token: str, body: dict) -> requests.Response:
    return requests.post(
        scheduler.url + path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        verify=str(scheduler.setup.ca),
        timeout=20,
    )


def test_job_b_cannot_release_or_renew_job_as_slot_with_the_same_service_account(scheduler, ci):
    job_a, job_b = client(scheduler), client(scheduler)
    grant_a = job_a.acquire(placement("isolation-a", "job-a"))
    grant_b = job_b.acquire(placement("isolation-b", "job-b"))
    try:
        assert grant_a.lease.release_token and grant_a.lease.release_token != grant_b.lease.release_token
        # B knows everything about A's slot (name, holder, fencing token) except A's release token:
        # it tries its own token, a guess, and A's holder under its own name.
        for token in (grant_b.lease.release_token, "guessed-" + "x" * 40):
            with pytest.raises(SchedulerError, match=r"refused \(403\): not your slot"):
                job_b.release_lease(grant_a.lease.name, grant_a.lease.holder, token)
            with pytest.raises(SchedulerError, match=r"refused \(403\): not your slot"):
                job_b.renew(replace(grant_a.lease, release_token=token))
        missing = post(
            scheduler, f"/v1/slots/{grant_a.lease.name}/release", ci_scheduler_token(), {"holder": grant_a.lease.holder}
        )
        assert missing.status_code == 400 and "release_token" in missing.json()["error"]
        # A still holds its slot, renews and releases it with its own token.
        assert held_slots(ci)[grant_a.lease.name] == grant_a.lease.holder
        job_a.renew(grant_a.lease)
        assert job_a.release(grant_a) is True
        assert grant_a.lease.name not in held_slots(ci)
    finally:
        job_a.release(grant_a)  # idempotent: False if it was released above
        job_b.release(grant_b)


def test_a_token_for_the_api_servers_audience_is_refused_unless_the_config_opts_out(admin, scheduler, tmp_path):
    api_token = token_for(admin, CI_SA, seconds=600)  # valid at the API server, not minted for the scheduler
    refused = post(scheduler, f"/v1/pools/{POOL}/acquire", api_token, {"workload_key": "aud", "max_wait_seconds": 0})
    assert refused.status_code == 401, refused.text
    message = refused.json()["error"]
    assert "does not accept this token for audience warmbuild-scheduler" in message and "\n" not in message
    with pytest.raises(SchedulerError, match=r"did not accept the token \(401\).*audience warmbuild-scheduler"):
        client(scheduler, token=api_token).acquire(placement("aud", "aud"))
    # The explicit opt-out (`audiences: []`) accepts it: the clusters that cannot project tokens.
    opted_out = prepare(admin, tmp_path / "opt-out", [{"pools": [EMPTY_POOL], "users": [CI_USER]}], audiences=[])
    replica = SchedulerProcess(admin, opted_out, "opt-out", max_poll_seconds=1)
    try:
        accepted = post(
            replica, f"/v1/pools/{EMPTY_POOL}/acquire", api_token, {"workload_key": "aud", "max_wait_seconds": 0}
        )
        assert accepted.status_code == 200 and accepted.json()["decision"] == "fallback", accepted.text
    finally:
        replica.stop()


def test_status_hides_holders_from_callers_who_are_not_admins(admin, scheduler):
    job = client(scheduler)
    grant = job.acquire(placement("isolation-status", "status-job"))
    try:
        seen = job.pool_status(POOL)
        slots = [slot for builder in seen["builders"] for slot in builder["slots"]]
        assert sum(builder["in_use"] for builder in seen["builders"]) == 1
        assert [slot["busy"] for slot in slots].count(True) == 1
        assert all(
            slot["holder"] is None and slot["run_url"] is None and slot["workload_key"] is None for slot in slots
        )
        assert "status-job" not in str(seen) and "isolation-status" not in str(seen)

        oncall = client(scheduler, token=scheduler_token_for(admin, ADMIN_SA, seconds=600))
        full = oncall.pool_status(POOL)
        held = [slot for builder in full["builders"] for slot in builder["slots"] if slot["busy"]]
        assert [slot["holder"] for slot in held] == [grant.lease.holder]
        assert held[0]["run_url"] == "https://ci.example/status-job" and held[0]["workload_key"] == "isolation-status"
    finally:
        job.release(grant)


def test_an_untrusted_identity_is_refused_a_warm_slot_with_one_line_and_exit_7(
    admin, scheduler, ci, tiny_app, run_warmbuild, tmp_path
):
    forks_token = scheduler_token_for(admin, FORKS_SA, seconds=600)
    answer = post(scheduler, f"/v1/pools/{POOL}/acquire", forks_token, {"workload_key": "fork", "max_wait_seconds": 0})
    assert answer.status_code == 403 and answer.json()["code"] == "untrusted", answer.text
    assert "never gives it a warm or spill slot" in answer.json()["error"]
    assert "ephemeral builder" in answer.json()["error"]
    with pytest.raises(UntrustedRefused) as caught:
        client(scheduler, token=forks_token).acquire(placement("fork", "fork"))
    assert isinstance(caught.value, NoSlotAvailable) and caught.value.exit_code == 7
    done = run_warmbuild(
        "build",
        str(tiny_app),
        "--pool",
        POOL,
        "--scheduler",
        scheduler.url,
        "--scheduler-ca",
        str(scheduler.setup.ca),
        "--state-file",
        str(tmp_path / "state.json"),
        env={"KUBECONFIG": "/nonexistent", "WARMBUILD_BUILDER": "", "WARMBUILD_SCHEDULER_TOKEN": forks_token},
    )
    assert done.returncode == 7, done.stderr
    assert "untrusted caller" in done.stderr and "Traceback" not in done.stderr
    assert not held_slots(ci)  # nothing was taken, not for a moment


def test_the_per_identity_request_cap_answers_429_and_leaves_renewals_alone(scheduler, ci):
    waiting = [client(scheduler, poll_seconds=3) for _ in range(2)]
    done: list[BaseException | None] = []

    def wait_on_the_empty_pool(job: SchedulerClient) -> None:
        try:
            job.acquire(placement("cap", "cap", pool=EMPTY_POOL, max_wait=4))
            done.append(None)
        except NoSlotAvailable as exc:
            done.append(exc)

    threads = [threading.Thread(target=wait_on_the_empty_pool, args=(job,)) for job in waiting]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # both long-polls are on the server now
    token = ci_scheduler_token()
    third = post(scheduler, f"/v1/pools/{EMPTY_POOL}/acquire", token, {"workload_key": "cap", "max_wait_seconds": 0})
    assert third.status_code == 429, third.text
    assert third.headers["Retry-After"].isdigit() and "limits.concurrent_requests 2" in third.json()["error"]
    # Renewals and releases have their own budget: a full queue never starves a running build.
    short = post(scheduler, "/v1/slots/nothing-slot-0/release", token, {"holder": "x/1@y", "release_token": "t"})
    assert short.status_code in (200, 403), short.text
    for thread in threads:
        thread.join(timeout=30)
    assert len(done) == 2 and all(isinstance(exc, NoSlotAvailable) for exc in done)


def test_the_held_slots_cap_answers_429_until_a_slot_is_released(scheduler, ci):
    job = client(scheduler)
    grants = [job.acquire(placement(f"held-{i}", f"held-{i}")) for i in range(4)]
    try:
        over = post(
            scheduler,
            f"/v1/pools/{POOL}/acquire",
            ci_scheduler_token(),
            {"workload_key": "held-5", "max_wait_seconds": 0},
        )
        assert over.status_code == 429 and "limits.held_slots 4" in over.json()["error"], over.text
        assert len(held_slots(ci)) == 4
        job.release(grants.pop())
        grants.append(job.acquire(placement("held-5", "held-5")))
    finally:
        for grant in grants:
            job.release(grant)


def _kube_requests(replica) -> float:
    text = requests.get(f"{replica.url}/metrics", verify=str(replica.setup.ca), timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "warmbuild_scheduler_kube_requests_total"
    )


@pytest.mark.parametrize("watch", [False, True], ids=["polling", "shared-watch"])
def test_eight_waiting_callers_cost_few_api_requests_with_the_shared_watch(admin, ci, watch, tmp_path):
    """8 callers wait 8 s on a full pool. Printed: Kubernetes API requests per second of the replica."""
    local = prepare(
        admin, tmp_path / "rate", [{"pools": [POOL], "users": [CI_USER]}], limits={"concurrent_requests": 16}
    )
    replica = SchedulerProcess(
        admin, local, "rate", max_poll_seconds=30, extra_args=() if watch else ("--no-pool-watch",)
    )
    holder = client(replica)
    # The pool is full for the whole test (no renewals here: the Leases outlast it).
    grants = [holder.acquire(placement(f"fill-{i}", f"fill-{i}", lease_seconds=90)) for i in range(6)]
    try:
        waiters = [client(replica, poll_seconds=30) for _ in range(8)]
        outcomes: list[str] = []
        threads = [
            threading.Thread(
                target=lambda job=job, i=i: outcomes.append(
                    _outcome(lambda: job.acquire(placement(f"wait-{i}", f"wait-{i}", max_wait=8)))
                )
            )
            for i, job in enumerate(waiters)
        ]
        time.sleep(1.0)  # the replica's own start-up requests are over
        before = _kube_requests(replica)
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        elapsed = time.monotonic() - started
        spent = _kube_requests(replica) - before - 2  # the first scrape lists pods and Leases once after reading
        rate = spent / elapsed
        print(f"\n8 waiting callers, {'shared watch' if watch else 'polling'}: {spent:.0f} requests in {elapsed:.1f}s")
        print(f"  = {rate:.1f} Kubernetes API requests/s")
        assert outcomes.count("no slot") == 8, outcomes
        if watch:
            assert rate < 3, f"{rate:.1f} requests/s with the shared watch"
        else:
            assert rate > 10, f"{rate:.1f} requests/s polling: the comparison measures nothing"
    finally:
        for grant in grants:
            holder.release(grant)
        replica.stop()


def _outcome(acquire) -> str:
    try:
        acquire()
        return "granted"
    except NoSlotAvailable:
        return "no slot"
