"""The fleet simulator: determinism, known answers, invariants (Hypothesis), the history index, learning."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmbuild.pool import affinity, placement, policy
from warmbuild.pool.policy import POLL_SECONDS
from warmbuild.pool.records import BuildRecord
from warmbuild.simulate import policies as sim_policies
from warmbuild.simulate.engine import HistoryIndex
from warmbuild.simulate.model import (
    POLICIES,
    Arrival,
    DedicatedOptions,
    FleetConfig,
    KeyProfile,
    ScaleEvent,
    SimulationConfig,
    WarmbuildOptions,
    Workload,
)
from warmbuild.simulate.report import policy_metrics, quantile
from warmbuild.simulate.runs import compare, run_policy
from warmbuild.simulate.workload import SyntheticSpec, learn_profiles, synthetic_workload, workload_from_history


def profile(key, warm=10.0, spill=30.0, ephemeral=40.0, startup=5.0, deps=0.0):
    return KeyProfile(key, warm, spill, ephemeral, startup, deps)


def workload(arrivals, profiles, period=0.0):
    return Workload(
        arrivals=tuple(arrivals), profiles={p.key: p for p in profiles}, description="test", period_seconds=period
    )


def config(builders=1, slots=1, cache=10, acquire=0.0, **kw):
    fleet_kw = {k: kw.pop(k) for k in list(kw) if k in FleetConfig.__dataclass_fields__}
    return SimulationConfig(
        fleet=FleetConfig(builders=builders, slots=slots, cache_keys=cache, acquire_seconds=acquire, **fleet_kw), **kw
    )


# --- determinism ------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_results_and_another_seed_other_ones():
    spec = SyntheticSpec(keys=40, builds_per_day=3000, days=0.5, seed=7)
    cfg = config(
        builders=4,
        slots=2,
        cache=8,
        acquire=0.05,
        seed=7,
        scale_events=(ScaleEvent(3600, "join", 2), ScaleEvent(7200, "drain", 1), ScaleEvent(9000, "crash", 1)),
    )
    first = compare(synthetic_workload(spec), POLICIES, cfg)
    second = compare(synthetic_workload(spec), POLICIES, cfg)
    assert [run.outcomes for run in first] == [run.outcomes for run in second]
    assert [policy_metrics(r) for r in first] == [policy_metrics(r) for r in second]
    other = synthetic_workload(SyntheticSpec(keys=40, builds_per_day=3000, days=0.5, seed=8))
    assert other.arrivals != synthetic_workload(spec).arrivals


def test_synthetic_arrivals_follow_the_rate_the_daily_shape_and_the_zipf_popularity():
    w = synthetic_workload(
        SyntheticSpec(
            keys=100, zipf=1.0, builds_per_day=20000, days=1, peak_hour=14, peak_to_mean=1.8, deps_share=0.25, seed=3
        )
    )
    assert 19000 < len(w.arrivals) < 21000
    hours = defaultdict(int)
    for a in w.arrivals:
        hours[int(a.time // 3600)] += 1
    assert hours[14] > 4 * hours[2]  # 1.8x the mean at the peak, 0.2x at night
    counts = sorted(defaultdict(int, {}).values())
    per_key = defaultdict(int)
    for a in w.arrivals:
        per_key[a.key] += 1
    counts = sorted(per_key.values(), reverse=True)
    assert counts[0] > 10 * counts[49]  # rank 1 vs rank 50: 50x by Zipf, noisy
    assert 0.22 < sum(a.change == "deps" for a in w.arrivals) / len(w.arrivals) < 0.28


# --- known answers ----------------------------------------------------------------------------


def test_more_demand_than_slots_queues_linearly_when_nothing_else_is_allowed():
    # One slot, 10 s builds, an arrival every 5 s: build i starts at 10 i, so it queues 5 i seconds.
    arrivals = [Arrival(i, 5.0 * i, "k") for i in range(50)]
    w = workload(arrivals, [profile("k", warm=10, spill=10)])
    for name in ("sticky", "random"):
        run = run_policy(w, name, config())
        queues = [o.queue_seconds for o in run.outcomes]
        assert queues == pytest.approx([5.0 * i for i in range(50)])
        assert all(o.warm_cache for o in run.outcomes[1:]) and not run.outcomes[0].warm_cache
        assert policy_metrics(run).utilisation == pytest.approx(500 / run.horizon)


def test_warmbuild_falls_back_instead_of_queueing_without_bound():
    # The same overload on 2 builders × 1 slot: the affine slot is busy, waiting would take long.
    arrivals = [Arrival(i, 5.0 * i, "k") for i in range(60)]
    w = workload(arrivals, [profile("k", warm=10, spill=30, ephemeral=40, startup=5)])
    cfg = config(builders=2, warmbuild=WarmbuildOptions(max_wait_seconds=20))
    run = run_policy(w, "warmbuild", cfg)
    metrics = policy_metrics(run)
    assert {"warm", "spill", "ephemeral"} <= set(metrics.path_shares)
    assert max(o.queue_seconds for o in run.outcomes) <= 20 + 0.5 + 1e-9  # max wait + one poll
    sticky = policy_metrics(run_policy(w, "sticky", cfg))
    assert sticky.queue_p95 > 10 * max(1.0, metrics.queue_p95)  # the hash owner's queue only grows


def test_warmbuild_waits_for_the_affine_slot_when_it_frees_soon():
    # A holder of a 10 s build; a second build of the same key a second later: wait ~9 s + 10 s
    # beats a 30 s spill and a 45 s ephemeral build — and the history says so after a few builds.
    arrivals = []
    t = 0.0
    for i in range(20):
        arrivals += [Arrival(2 * i, t, "k"), Arrival(2 * i + 1, t + 1.0, "k")]
        t += 60.0
    w = workload(arrivals, [profile("k", warm=10, spill=30, ephemeral=40, startup=5)])
    run = run_policy(w, "warmbuild", config(builders=2))
    late = [o for o in run.outcomes if o.arrival >= 20 and o.arrival % 2 == 1]
    assert all(o.path == "warm" and o.queue_seconds > 8 for o in late)


def test_max_wait_zero_and_fallback_fail_never_queue():
    arrivals = [Arrival(i, 1.0 * i, "k") for i in range(10)]
    w = workload(arrivals, [profile("k", warm=10, spill=30)])
    run = run_policy(
        w, "warmbuild", config(builders=1, warmbuild=WarmbuildOptions(max_wait_seconds=0, fallback="fail"))
    )
    statuses = [o.status for o in run.outcomes]
    assert statuses[0] == "success" and statuses.count("failed") >= 8
    assert all(o.queue_seconds == 0 for o in run.outcomes)


def test_a_cold_builder_pays_the_spill_duration_and_the_lru_evicts():
    # One builder caching one key: alternating keys never hit; one key always hits after its first.
    alternating = [Arrival(i, 100.0 * i, "ab"[i % 2]) for i in range(6)]
    w = workload(alternating, [profile("a"), profile("b")])
    run = run_policy(w, "sticky", config(cache=1))
    assert [o.warm_cache for o in run.outcomes] == [False] * 6
    assert [o.build_seconds for o in run.outcomes] == [30.0] * 6
    run = run_policy(w, "sticky", config(cache=2))
    assert [o.warm_cache for o in run.outcomes] == [False, False, True, True, True, True]
    assert [o.build_seconds for o in run.outcomes][2:] == [10.0] * 4


def test_dependency_changes_jitter_and_slot_slowdown_change_durations():
    arrivals = [Arrival(0, 0.0, "k", "deps", 2.0), Arrival(1, 0.0, "k", "code", 1.0)]
    w = workload(arrivals, [profile("k", warm=10, spill=30, deps=100)])
    run = run_policy(w, "random", config(slots=2, slot_slowdown=0.5))
    assert run.outcomes[0].build_seconds == pytest.approx((30 + 100) * 2.0)
    assert run.outcomes[1].build_seconds == pytest.approx(10 * 1.5)  # warm by then; one build already running


def test_dedicated_daemons_cold_start_and_scale_to_zero():
    arrivals = [Arrival(0, 0.0, "k"), Arrival(1, 100.0, "k"), Arrival(2, 2000.0, "k")]
    w = workload(arrivals, [profile("k", warm=10, spill=30, startup=20)])
    cfg = config(dedicated=DedicatedOptions(idle_timeout_seconds=300))
    run = run_policy(w, "dedicated", cfg)
    first, second, third = run.outcomes
    assert first.startup_seconds == 20 and not first.warm_cache and first.total_seconds == 50
    assert second.startup_seconds == 0 and second.warm_cache and second.total_seconds == 10
    assert third.startup_seconds == 20 and third.warm_cache  # the volume survived scale-to-zero
    # up: 0-(110+300) and 2000-(2030+300)
    assert sum(b.up_seconds for b in run.builders) == pytest.approx(410 + 330)
    cold = run_policy(w, "dedicated", config(dedicated=DedicatedOptions(idle_timeout_seconds=300, keep_cache=False)))
    assert not cold.outcomes[2].warm_cache


def test_scale_events_drain_join_and_crash():
    arrivals = [Arrival(i, 10.0 * i, f"k{i % 5}") for i in range(100)]
    w = workload(arrivals, [profile(f"k{i}", warm=15, spill=15) for i in range(5)])
    cfg = config(
        builders=3,
        slots=1,
        lease_seconds=9,
        scale_events=(ScaleEvent(200, "drain", 1), ScaleEvent(400, "join", 2), ScaleEvent(600, "crash", 1)),
    )
    for name in ("warmbuild", "sticky", "random"):
        run = run_policy(w, name, cfg)
        lives = defaultdict(list)
        for b in run.builders:
            lives[b.name].append((b.joined, b.left))
        drained = min(lives["builders-2"])
        assert drained[0] == 0 and 200 <= drained[1] <= 200 + 15  # drained: left when its build ended
        assert not [o for o in run.outcomes if o.builder == "builders-2" and 200 < o.started < 400]
        # Two joined at 400: builders-2 again (its volume back: StatefulSet ordinals) and builders-3.
        assert (400, 600) in lives["builders-3"] or (400, 600) in lives["builders-2"]  # the newest crashed at 600
        assert sorted(lives) == ["builders-0", "builders-1", "builders-2", "builders-3"]
        aborted = [o for o in run.outcomes if o.status == "aborted"]
        for o in aborted:
            assert 600 <= o.ended <= 600 + 3  # noticed at the next renewal: lease/3
        by_arrival = defaultdict(list)
        for o in run.outcomes:
            by_arrival[o.arrival].append(o.status)
        assert all(statuses.count("success") + statuses.count("failed") == 1 for statuses in by_arrival.values())


# --- invariants (Hypothesis) --------------------------------------------------------------------


@st.composite
def scenarios(draw):
    keys = [f"k{i}" for i in range(draw(st.integers(1, 5)))]
    profiles = [
        profile(
            k,
            warm=draw(st.floats(0.5, 20)),
            spill=draw(st.floats(0.5, 40)),
            ephemeral=draw(st.floats(0.5, 40)),
            startup=draw(st.floats(0, 10)),
            deps=draw(st.floats(0, 20)),
        )
        for k in keys
    ]
    times = sorted(draw(st.lists(st.floats(0, 200), min_size=1, max_size=40)))
    arrivals = [
        Arrival(i, t, draw(st.sampled_from(keys)), draw(st.sampled_from(("code", "deps"))), draw(st.floats(0.5, 2)))
        for i, t in enumerate(times)
    ]
    events = tuple(
        ScaleEvent(draw(st.floats(0, 200)), draw(st.sampled_from(("join", "drain", "crash"))), draw(st.integers(1, 2)))
        for _ in range(draw(st.integers(0, 3)))
    )
    cfg = SimulationConfig(
        fleet=FleetConfig(
            builders=draw(st.integers(1, 4)),
            slots=draw(st.integers(1, 3)),
            cache_keys=draw(st.integers(1, 3)),
            acquire_seconds=draw(st.sampled_from((0.0, 0.05))),
            slot_slowdown=draw(st.sampled_from((0.0, 0.3))),
            scale_events=events,
        ),
        warmbuild=WarmbuildOptions(
            max_wait_seconds=draw(st.sampled_from((0.0, 5.0, 60.0))),
            fallback=draw(st.sampled_from(policy.FALLBACKS)),
            recheck_seconds=draw(st.sampled_from((0.5, 5.0))),
        ),
        dedicated=DedicatedOptions(
            idle_timeout_seconds=draw(st.sampled_from((0.0, 30.0))), keep_cache=draw(st.booleans())
        ),
        seed=draw(st.integers(0, 5)),
    )
    return workload(arrivals, profiles), cfg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from(POLICIES))
def test_no_builder_exceeds_its_slots_and_every_build_ends_exactly_once(scenario, name):
    w, cfg = scenario
    run = run_policy(w, name, cfg)  # the engine raises InvariantViolation itself; check from outside too
    assert len({o.build for o in run.outcomes}) == len(run.outcomes)
    by_arrival = defaultdict(list)
    for o in run.outcomes:
        by_arrival[o.arrival].append(o)
        assert o.arrived <= o.started + 1e-9 and o.started <= o.ended + 1e-9 and o.queue_seconds >= 0
    assert set(by_arrival) == {a.index for a in w.arrivals}
    for outcomes in by_arrival.values():
        final = [o for o in outcomes if o.status != "aborted"]
        assert len(final) == 1  # aborted attempts are retried until one ends
    if name == "warmbuild":  # nobody waits past --max-wait (+ one poll and the placement latency)
        limit = cfg.warmbuild.max_wait_seconds + POLL_SECONDS + cfg.fleet.acquire_seconds + 1e-6
        assert all(o.queue_seconds <= limit for o in run.outcomes if o.status != "aborted")
    slots = {b.name: b.slots for b in run.builders}
    edges = defaultdict(list)
    for o in run.outcomes:
        if o.status == "success" and o.builder is not None:
            edges[o.builder] += [(o.started, 1), (o.ended, -1)]
    for builder, points in edges.items():
        running = 0
        for _, step in sorted(points, key=lambda p: (p[0], p[1])):  # an end before a start at the same instant
            running += step
            assert running <= slots[builder], f"{builder} ran {running} builds on {slots[builder]} slots"


# --- the real placement code ------------------------------------------------------------------


def test_the_warmbuild_policy_calls_warmbuilds_own_placement_functions():
    assert sim_policies.preference_order is affinity.preference_order
    assert sim_policies.placement_round is policy.placement_round  # the round placement.acquire_build_slot runs
    assert placement.placement_round is policy.placement_round
    assert sim_policies.estimate_paths is policy.estimate_paths
    assert sim_policies.estimate_slot_wait is policy.estimate_slot_wait


def test_the_affine_builder_is_the_rendezvous_first_choice(monkeypatch):
    keys = [f"key-{i}" for i in range(30)]
    arrivals = [Arrival(i, 1000.0 * i, k) for i, k in enumerate(keys)]
    run = run_policy(workload(arrivals, [profile(k) for k in keys]), "warmbuild", config(builders=5))
    names = [f"builders-{i}" for i in range(5)]
    assert [o.builder for o in run.outcomes] == [affinity.preference_order(k, names)[0] for k in keys]


def random_records(seed: int, count: int) -> list[BuildRecord]:
    rng = random.Random(seed)
    keys = [f"h{i}" for i in range(rng.randint(1, 6))]
    return [
        BuildRecord(
            rng.choice(keys),
            float(i),
            rng.choice(("warm", "spill", "ephemeral", "direct")),
            "b",
            0.0,
            rng.uniform(0, 30),
            rng.uniform(1, 300),
            0.0,
            rng.random(),
            rng.choice(("success", "success", "failed")),
        )
        for i in range(count)
    ]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 120), st.integers(1, 60), st.data())
def test_the_history_index_gives_the_policy_functions_exactly_what_the_whole_history_gives(seed, count, window, data):
    records = random_records(seed, count)
    index = HistoryIndex(max_records=window)
    cut = data.draw(st.integers(0, count))
    for r in records[:cut]:
        index.append(r)
    index.snapshot()
    for r in records[cut:]:
        index.append(r)  # after the snapshot: not visible until the next one
    snapshot = index.snapshot_records()
    assert snapshot == tuple(records[max(0, cut - window) : cut])
    keys = sorted({r.key for r in records}) + ["unknown"]
    for key in keys:
        assert policy.estimate_paths(index.relevant((key,)), key) == policy.estimate_paths(snapshot, key)
    holders = [
        (data.draw(st.sampled_from(keys)), data.draw(st.floats(0, 400))) for _ in range(data.draw(st.integers(0, 3)))
    ]
    relevant = index.relevant([k for k, _ in holders])
    assert policy.estimate_slot_wait(holders, relevant) == policy.estimate_slot_wait(holders, snapshot)


# --- learning from history --------------------------------------------------------------------


def rec(key, path, seconds, started, queue=0.0, ratio=0.8, startup=0.0, builder="builders-0"):
    return BuildRecord(
        key, started, path, builder, queue, startup, seconds, queue + startup + seconds, ratio, "success"
    )


def test_durations_are_learned_per_key_and_a_cache_miss_on_the_warm_path_counts_as_cold():
    records = [
        rec("a", "warm", 10, 0, ratio=0.2),
        rec("a", "warm", 4, 10),
        rec("a", "warm", 5, 20),
        rec("a", "warm", 6, 30),
        rec("a", "spill", 12, 40),
        rec("b", "warm", 20, 50),
        rec("b", "ephemeral", 60, 60, startup=8, builder="eph-x"),
    ]
    profiles = learn_profiles(records)
    assert profiles["a"].warm_seconds == 5  # the cold first build (ratio 0.2 vs 0.8) is not warm
    assert profiles["a"].spill_seconds == 11  # median of the miss and the spill
    assert profiles["b"].warm_seconds == 20 and profiles["b"].ephemeral_seconds == 60
    assert profiles["b"].spill_seconds == pytest.approx(20 * 11 / 5)  # the pool's cold/warm ratio
    assert profiles["a"].ephemeral_seconds == pytest.approx(5 * 3)  # the pool's ephemeral/warm ratio
    assert profiles["a"].ephemeral_startup_seconds == 8


def test_a_history_replays_arrivals_at_their_placement_start_with_real_builder_names():
    records = [
        rec("a", "warm", 5, 100.0, queue=2.0, builder="builders-1"),
        rec("b", "spill", 9, 99.0, builder="builders-0"),
        rec("a", "warm", 5, 130.0, queue=0.01, builder="builders-1"),
    ]
    w = workload_from_history(records, route_keys={"a": "team/app|Dockerfile|"})
    assert [(a.time, a.key) for a in w.arrivals] == [
        (0.0, "a"),
        (1.0, "b"),
        (pytest.approx(31.99), "a"),
    ]  # started - queue
    assert w.builder_names == ("builders-0", "builders-1")
    assert w.route_keys == {"a": "team/app|Dockerfile|"}
    run = run_policy(w, "warmbuild", SimulationConfig(fleet=FleetConfig(builders=2)))
    assert {o.builder for o in run.outcomes} <= {"builders-0", "builders-1"}
    assert run.outcomes[2].builder == affinity.preference_order("team/app|Dockerfile|", ["builders-0", "builders-1"])[0]


def test_quantile_interpolates_like_numpy():
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert quantile([10], 0.95) == 10
    assert quantile([], 0.5) == 0.0
    assert quantile(list(range(101)), 0.95) == 95
