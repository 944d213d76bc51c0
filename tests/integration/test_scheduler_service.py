"""The scheduler service on the real control plane: real `warmbuild scheduler` processes on loopback
(TLS, TokenReview auth), clients racing through two replicas, a replica killed by SIGKILL, metrics
that match the Leases, fencing through renewals, and an end-to-end `warmbuild build --scheduler`.
Fencing of a running build is tested here for both paths (direct and scheduler), in one test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest
import requests
from poolkit import assert_served_without_overlap, held_slots, race_for_slots, take_over, wait_for
from prometheus_client.parser import text_string_to_metric_families
from scheduler_harness import (
    CI_USER,
    NAMESPACE,
    SchedulerProcess,
    ci_scheduler_token,
    ensure_service_account,
    prepare,
    scheduler_token_for,
)

from warmbuild.errors import LeaseLost
from warmbuild.kube.names import leases_path
from warmbuild.kube.views import parse_lease
from warmbuild.pool.affinity import preference_order
from warmbuild.pool.leases import HolderInfo, release_slot
from warmbuild.pool.membership import discover_builders
from warmbuild.pool.placement import PlacementRequest
from warmbuild.pool.workload import explicit_key
from warmbuild.scheduler.client import SchedulerClient, SchedulerError, SchedulerOptions

POOL = os.environ.get("WARMBUILD_POOL", "default")
OTHER_SA = "warmbuild-other-team"
LEASE_SECONDS = 5  # short, so a grant whose answer died with a killed replica expires quickly


def held_by(client, hint_prefix: str) -> dict[str, str]:
    """Slots held by this test's clients (their holder identities start with the hint they sent)."""
    return {name: holder for name, holder in held_slots(client).items() if holder.startswith(hint_prefix)}


@pytest.fixture(scope="module")
def setup(admin, tmp_path_factory):
    ensure_service_account(admin, OTHER_SA)
    return prepare(
        admin,
        tmp_path_factory.mktemp("scheduler"),
        [
            {"pools": [POOL], "users": [CI_USER]},
            {"pools": ["other"], "users": [f"system:serviceaccount:{NAMESPACE}:{OTHER_SA}"]},
        ],
    )


@pytest.fixture(scope="module")
def replicas(admin, setup):
    started = []
    try:
        for name in ("replica-a", "replica-b"):
            started.append(SchedulerProcess(admin, setup, name, max_poll_seconds=3))
        yield started
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture(autouse=True)
def pool_is_idle(ci):
    wait_for(lambda: len(discover_builders(ci, NAMESPACE, POOL)) == 3, 120, what="3 ready builders")
    wait_for(lambda: not held_slots(ci), 30, what="all slots free before the test")
    yield
    wait_for(lambda: not held_slots(ci), 30, what="all slots free after the test")


def client_for(setup, *urls: str, poll_seconds: float = 3.0) -> SchedulerClient:
    return SchedulerClient(
        SchedulerOptions(urls=tuple(urls), token=ci_scheduler_token(), ca_file=str(setup.ca), poll_seconds=poll_seconds)
    )


def placement(key: str, identity: str, max_wait: float = 60, lease_seconds: int = LEASE_SECONDS) -> PlacementRequest:
    return PlacementRequest(
        NAMESPACE,
        POOL,
        explicit_key(key),
        HolderInfo(identity=identity, run_url=f"https://ci.example/{identity}"),
        max_wait_seconds=max_wait,
        lease_seconds=lease_seconds,
    )


def scrape(replica, setup) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"{replica.url}/metrics", verify=str(setup.ca), timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def race(
    setup, urls, clients: int, hold_seconds: float, observer_client, during=None, lease_seconds: int = LEASE_SECONDS
):
    """`clients` threads acquire, hold (renewing through the scheduler), release; an observer watches the Leases."""

    def acquire_hold_release(index: int):
        client = client_for(setup, *urls)
        try:
            grant = client.acquire(placement(f"race-{index % 12}", f"racer-{index}", lease_seconds=lease_seconds))
            start = time.monotonic()
            lost: list[str] = []
            keeper = client.keep(grant, on_lost=lost.append)
            time.sleep(hold_seconds)
            keeper.stop()
            end = time.monotonic()
            assert not lost, lost
            assert client.release(grant), f"{grant.lease.name} was not ours any more at release"
            return grant.lease.name, start, end, grant.lease.fencing_token
        finally:
            client.close()

    return race_for_slots(acquire_hold_release, clients, observer_client, during=during, join_timeout=180)


def test_forty_clients_through_two_replicas_never_exceed_six_holders(setup, replicas, ci):
    seen_max, violations, intervals, errors = race(setup, [r.url for r in replicas], 40, 0.3, ci)
    assert not errors, errors[:3]
    assert not violations, violations[:3]
    assert 1 <= seen_max <= 6
    assert_served_without_overlap(intervals, 40)
    assert not held_by(ci, "racer-")
    # Both replicas served, and counted what they did.
    counted = 0
    for replica in replicas:
        samples = scrape(replica, setup)
        counted += sum(
            v
            for (name, labels), v in samples.items()
            if name == "warmbuild_scheduler_acquisitions_total" and ("pool", POOL) in labels
        )
    assert counted == 40


def test_a_replica_killed_mid_run_leaves_clients_finishing_through_the_other(admin, setup, ci):
    replicas = [SchedulerProcess(admin, setup, f"doomed-{i}", max_poll_seconds=3) for i in range(2)]
    try:
        victim, survivor = replicas

        def kill_soon():
            wait_for(lambda: len(held_slots(ci)) >= 4, 30, interval=0.05, what="the race to be under way")
            victim.kill()

        # Hold 1.2 s with 3 s leases (renewed every second): every holder renews through the scheduler.
        seen_max, violations, intervals, errors = race(
            setup, [victim.url, survivor.url], 18, 1.2, ci, during=kill_soon, lease_seconds=3
        )
        assert victim.process.returncode == -9
        assert not errors, errors[:3]
        assert not violations, violations[:3]
        assert_served_without_overlap(intervals, 18)
        # A grant the victim made but could not answer is never renewed: it expires by itself.
        wait_for(lambda: not held_by(ci, "racer-"), LEASE_SECONDS + 5, what="nothing leaked")
        assert survivor.process.poll() is None
    finally:
        for replica in replicas:
            replica.stop()


def test_a_token_the_api_rejects_is_401_and_another_teams_pool_is_403(admin, setup, replicas):
    replica = replicas[0]
    url = f"{replica.url}/v1/pools/{POOL}/acquire"
    body = {"workload_key": "auth-check", "max_wait_seconds": 0}
    before = scrape(replica, setup)

    missing = requests.post(url, json=body, verify=str(setup.ca), timeout=10)
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")

    forged = requests.post(
        url, json=body, headers={"Authorization": "Bearer not.a-real.token"}, verify=str(setup.ca), timeout=10
    )
    assert forged.status_code == 401, forged.text
    assert "the Kubernetes API does not accept this token" in forged.json()["error"]

    other = scheduler_token_for(admin, OTHER_SA, seconds=600)  # valid, but granted only pool "other"
    refused = requests.post(
        url, json=body, headers={"Authorization": f"Bearer {other}"}, verify=str(setup.ca), timeout=10
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == (
        f"system:serviceaccount:{NAMESPACE}:{OTHER_SA} may not use pool '{POOL}' (allowed: other)"
    )

    # The client says the same in one line, without retrying (exit 6 in the CLI).
    client = SchedulerClient(SchedulerOptions(urls=(replica.url,), token=other, ca_file=str(setup.ca)))
    with pytest.raises(SchedulerError, match=r"refused \(403\): .* may not use pool"):
        client.acquire(placement("auth-check", "other-team", max_wait=0))

    after = scrape(replica, setup)
    failures = lambda samples, code: samples.get(("warmbuild_scheduler_auth_failures_total", (("code", code),)), 0)  # noqa: E731
    assert failures(after, "401") - failures(before, "401") == 2
    assert failures(after, "403") - failures(before, "403") == 2


def test_metrics_match_the_leases_and_the_desired_builders_count_the_queue(setup, replicas, ci):
    replica = replicas[1]
    client = client_for(setup, replica.url)
    grants = [client.acquire(placement(f"metrics-{i}", f"metrics-{i}", max_wait=0)) for i in range(3)]
    try:
        for _ in range(5):  # the scrape must see what the Leases say at that moment: nothing moved around it
            before = held_slots(ci)
            samples = scrape(replica, setup)
            after = held_slots(ci)
            if before == after:
                break
        assert before == after and len(held_by(ci, "metrics-")) == 3
        by_builder: dict[str, int] = {}
        for name in after:
            builder = name.rsplit("-slot-", 1)[0]
            by_builder[builder] = by_builder.get(builder, 0) + 1
        for builder in discover_builders(ci, NAMESPACE, POOL):
            labels = (("builder", builder.name), ("pool", POOL))
            assert samples[("warmbuild_pool_slots", labels)] == 2
            assert samples[("warmbuild_pool_slots_in_use", labels)] == by_builder.get(builder.name, 0)
        assert samples[("warmbuild_pool_up", (("pool", POOL),))] == 1
        assert samples[("warmbuild_pool_desired_builders", (("pool", POOL),))] == math.ceil(len(after) / 2)

        # Fill the pool, then one more acquirer waits on this replica: it is queued demand.
        grants += [client.acquire(placement(f"metrics-fill-{i}", f"fill-{i}", max_wait=0)) for i in range(3)]
        waiter_grant: list = []
        waiter = threading.Thread(
            target=lambda: waiter_grant.append(
                client_for(setup, replica.url).acquire(placement("metrics-waiter", "waiter", max_wait=30))
            )
        )
        waiter.start()
        key = ("warmbuild_pool_waiting_acquirers", (("pool", POOL),))
        samples = wait_for(
            lambda: (lambda s: s if s[key] == 1 else None)(scrape(replica, setup)), 10, what="a waiting acquirer"
        )
        assert samples[("warmbuild_pool_desired_builders", (("pool", POOL),))] == math.ceil((6 + 1) / 2)
        assert sum(v for (name, _), v in samples.items() if name == "warmbuild_pool_slots_in_use") == 6
        builders = [b.name for b in discover_builders(ci, NAMESPACE, POOL)]
        on_affine = next(g for g in grants if g.builder.name == preference_order("metrics-waiter", builders)[0])
        grants.remove(on_affine)
        client.release(on_affine)  # frees a slot on the waiter's own builder: it gets it without spilling
        waiter.join(timeout=30)
        grants += waiter_grant
        samples = scrape(replica, setup)
        assert samples[key] == 0
        assert samples[("warmbuild_scheduler_wait_seconds_count", (("path", "warm"), ("pool", POOL)))] >= 1
    finally:
        for grant in grants:
            client.release(grant)
    histogram = scrape(replica, setup)
    assert sum(v for (name, _), v in histogram.items() if name == "warmbuild_build_duration_seconds_count") >= 6


def test_a_renewal_after_a_takeover_says_the_slot_is_lost(setup, replicas, admin):
    client = client_for(setup, *(r.url for r in replicas))
    grant = client.acquire(placement("fencing-check", "victim", max_wait=0))
    try:
        take_over(admin, grant.lease.name)
        # The scheduler does not say who holds it now (that is for admins): only that it is lost.
        with pytest.raises(LeaseLost, match=f"slot lease {grant.lease.name} is no longer held by victim/"):
            client.renew(grant.lease)
        lost = threading.Event()
        reasons: list[str] = []
        keeper = client.keep(grant, on_lost=lambda reason: (reasons.append(reason), lost.set()))
        assert lost.wait(LEASE_SECONDS), "the keeper did not notice the takeover"
        keeper.stop()
        assert reasons == [f"slot lease {grant.lease.name} is no longer held by {grant.lease.holder}"]
        assert client.release(grant) is False  # not ours: the usurper keeps it
    finally:
        release_slot(admin, NAMESPACE, grant.lease.name, "usurper")


def test_build_through_the_scheduler_without_any_kubernetes_credentials(
    setup, replicas, tiny_app, registry, unique_repo, run_warmbuild, tmp_path, ci
):
    result_file, state_file = tmp_path / "result.json", tmp_path / "state.json"
    done = run_warmbuild(
        "build",
        str(tiny_app),
        "--pool",
        POOL,
        "--scheduler",
        ",".join(r.url for r in replicas),
        "--scheduler-ca",
        str(setup.ca),
        "--cache-key",
        f"sched-{unique_repo}",
        "--lease-seconds",
        "6",
        "--build-arg",
        f"REGISTRY={registry}",
        "--tag",
        f"{unique_repo}:sched",
        "--push",
        "--result-file",
        str(result_file),
        "--state-file",
        str(state_file),
        env={
            "KUBECONFIG": "/nonexistent",
            "WARMBUILD_BUILDER": "",
            "WARMBUILD_SCHEDULER_TOKEN": ci_scheduler_token(),
            "WARMBUILD_K8S_SERVER": "",
        },
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(result_file.read_text())
    placement_doc = result["placement"]
    assert placement_doc["path"] == "warm" and placement_doc["affine"] is True
    assert placement_doc["builder_name"] in {b.name for b in discover_builders(ci, NAMESPACE, POOL)}
    assert placement_doc["builder"].startswith("tcp://127.0.0.")
    assert result["image"]["pushed"] is True and result["image"]["digest"].startswith("sha256:")
    assert f"on {placement_doc['builder_name']}" in done.stderr
    assert not state_file.exists()
    assert not any("@system:serviceaccount:" in holder for holder in held_slots(ci).values())


def test_a_dead_scheduler_is_one_clear_line_within_seconds(setup, tiny_app, run_warmbuild, tmp_path, registry):
    from scheduler_harness import free_port

    dead = [f"https://127.0.0.1:{free_port()}", f"https://127.0.0.1:{free_port()}"]
    started = time.monotonic()
    done = run_warmbuild(
        "build",
        str(tiny_app),
        "--pool",
        POOL,
        "--scheduler",
        ",".join(dead),
        "--scheduler-ca",
        str(setup.ca),
        "--build-arg",
        f"REGISTRY={registry}",
        "--result-file",
        str(tmp_path / "r.json"),
        "--state-file",
        str(tmp_path / "s.json"),
        env={"KUBECONFIG": "/nonexistent", "WARMBUILD_BUILDER": "", "WARMBUILD_SCHEDULER_TOKEN": "t"},
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 6, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("::", "\x1b"))]
    errors = [line for line in lines if line.startswith("warmbuild: error:")]
    assert len(errors) == 1 and "no scheduler replica answered (2 URLs, 6 attempts)" in errors[0], lines
    assert "cannot connect to https://127.0.0.1:" in errors[0]
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_a_replica_stopped_by_sigterm_ends_its_long_polls_and_the_waiter_moves_on(admin, setup, ci):
    """A rollout: SIGTERM makes every waiting acquire answer "wait" at once; the client polls the other replica."""
    first, second = (SchedulerProcess(admin, setup, f"rollout-{i}", max_poll_seconds=30) for i in range(2))
    holder_client = client_for(setup, second.url)
    grants = []
    try:
        grants = [holder_client.acquire(placement(f"rollout-fill-{i}", f"fill-{i}", max_wait=0)) for i in range(6)]
        waiter = client_for(setup, first.url, second.url, poll_seconds=30)
        waiter._current = 0  # its long-poll goes to the replica about to stop
        got: list = []
        thread = threading.Thread(
            target=lambda: got.append(waiter.acquire(placement("rollout-waiter", "waiter", max_wait=60)))
        )
        thread.start()
        key = ("warmbuild_pool_waiting_acquirers", (("pool", POOL),))
        wait_for(lambda: scrape(first, setup)[key] == 1, 10, what="the waiter to long-poll the first replica")
        stopped_at = time.monotonic()
        first.stop()
        assert time.monotonic() - stopped_at < 5 and first.process.returncode == 0
        wait_for(lambda: scrape(second, setup)[key] == 1, 10, what="the waiter to poll the second replica")
        builders = [b.name for b in discover_builders(ci, NAMESPACE, POOL)]
        on_affine = next(g for g in grants if g.builder.name == preference_order("rollout-waiter", builders)[0])
        grants.remove(on_affine)
        holder_client.release(on_affine)
        thread.join(timeout=20)
        assert got and got[0].builder.name == on_affine.builder.name and got[0].path == "warm"
        grants.append(got[0])
    finally:
        for grant in grants:
            holder_client.release(grant)
        first.stop()
        second.stop()


def test_release_from_a_post_step_goes_through_the_scheduler(setup, replicas, run_warmbuild, tmp_path, ci):
    client = client_for(setup, replicas[0].url)
    grant = client.acquire(placement("post-step", "post-step", max_wait=0))
    state_file = tmp_path / "state.json"
    state_file.write_text(
        json.dumps(
            {
                "namespace": NAMESPACE,
                "lease": grant.lease.name,
                "holder": grant.lease.holder,
                "release_token": grant.lease.release_token,
            }
        )
    )
    env = {
        "KUBECONFIG": "/nonexistent",
        "WARMBUILD_SCHEDULER": replicas[1].url,
        "WARMBUILD_SCHEDULER_CA": str(setup.ca),
        "WARMBUILD_SCHEDULER_TOKEN": ci_scheduler_token(),
    }
    done = run_warmbuild("release", "--state-file", str(state_file), env=env)
    assert done.returncode == 0, done.stderr
    assert f"released slot {grant.lease.name} (scheduler)" in done.stderr
    assert not held_by(ci, "post-step") and not state_file.exists()


@pytest.mark.parametrize("path", ["direct", "scheduler"])
def test_a_build_whose_slot_is_taken_over_is_aborted(path, request, admin, tmp_path, registry):
    """Fencing on both paths: the runner renewing its own Lease (direct), or through the scheduler.
    Either way the build stops within seconds of a take-over, says why, and its own cleanup does
    not free the slot the usurper now holds."""
    app = tmp_path / "slow"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"FROM {registry}/library/python:3.11-slim\nRUN echo {time.time_ns()} && sleep 60\n"
    )
    state_file = tmp_path / "state.json"
    argv = [
        sys.executable,
        "-m",
        "warmbuild.cli",
        "build",
        str(app),
        "--pool",
        POOL,
        "--lease-seconds",
        "3",
        "--result-file",
        str(tmp_path / "r.json"),
        "--state-file",
        str(state_file),
    ]
    if path == "scheduler":
        setup, replicas = request.getfixturevalue("setup"), request.getfixturevalue("replicas")
        env = {
            **os.environ,
            "KUBECONFIG": "/nonexistent",
            "WARMBUILD_BUILDER": "",
            "WARMBUILD_SCHEDULER_TOKEN": ci_scheduler_token(),
        }
        argv += ["--scheduler", ",".join(r.url for r in replicas), "--scheduler-ca", str(setup.ca)]
    else:
        env = {**os.environ, "KUBECONFIG": os.environ["WARMBUILD_CI_KUBECONFIG"], "WARMBUILD_BUILDER": ""}
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    state = None
    try:
        state = wait_for(
            lambda: state_file.exists() and json.loads(state_file.read_text()), 60, what="the build to hold a slot"
        )
        time.sleep(2)  # let the solve start
        take_over(admin, state["lease"])  # retried if it races one of the build's renewals (every second)
        taken = time.monotonic()
        _, stderr = process.communicate(timeout=30)
        assert time.monotonic() - taken < 10
        assert process.returncode == 8, stderr
        # Direct: the runner reads the Lease itself; the scheduler does not say who holds it now.
        lost = "is now held by usurper" if path == "direct" else f"is no longer held by {state['holder']}"
        assert f"slot lease {state['lease']} {lost}" in stderr
        if path == "scheduler":  # the post step's token is in the state file, never in the log
            assert state["release_token"] and state["release_token"] not in stderr
        assert "aborted so that two builds never share a slot" in stderr
        lease = parse_lease(admin.request("GET", leases_path(NAMESPACE, state["lease"])).body)
        assert lease.holder == "usurper"  # the build's release did not free it
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if state:
            release_slot(admin, NAMESPACE, state["lease"], "usurper")
