"""The placement policy: the option expected to finish first wins; overrides are honoured."""

import pytest

from warmbuild.pool.policy import (
    PRIOR_EPHEMERAL_BUILD_SECONDS,
    PRIOR_EPHEMERAL_STARTUP_SECONDS,
    PRIOR_WARM_SECONDS,
    PathEstimates,
    Situation,
    decide,
    estimate_paths,
    estimate_slot_wait,
)
from warmbuild.pool.records import BuildRecord


def record(key, path, seconds, startup=0.0, status="success"):
    return BuildRecord(key, 0.0, path, "b", 0.0, startup, seconds, seconds + startup, 0.5, status)


def estimates(warm=30.0, spill=120.0, startup=20.0, ephemeral=100.0):
    return PathEstimates(warm, spill, startup, ephemeral, "test")


def busy(wait, **kw):
    base = dict(
        affine_builder="b-0",
        affine_free=False,
        affine_wait_seconds=wait,
        spill_free=False,
        waited_seconds=0.0,
        max_wait_seconds=300.0,
    )
    base.update(kw)
    return Situation(**base)


def test_waits_when_the_affine_slot_frees_soon_and_ephemeral_is_slow():
    d = decide(busy(10), estimates(warm=30, ephemeral=300))
    assert d.action == "wait" and d.expected_seconds == 40
    assert d.reason.startswith("affine builder b-0 busy for ~10s; wait expected 40s")
    assert "ephemeral expected 320s" in d.reason and d.reason.endswith("waited")


def test_goes_ephemeral_when_the_affine_slot_stays_busy_long():
    d = decide(busy(600), estimates(warm=30, startup=20, ephemeral=60))
    assert d.action == "ephemeral" and d.expected_seconds == 80
    assert d.reason.endswith("went ephemeral")


def test_a_wait_longer_than_max_wait_is_not_an_option():
    d = decide(busy(100, max_wait_seconds=50), estimates(warm=1, ephemeral=500))
    assert d.action == "ephemeral"


def test_spill_wins_when_another_warm_builder_is_free_and_cheaper():
    d = decide(busy(200, spill_free=True), estimates(warm=30, spill=50, ephemeral=100))
    assert d.action == "spill"


def test_ties_prefer_waiting_then_spilling_over_starting_a_pod():
    d = decide(busy(20, spill_free=True), estimates(warm=30, spill=50, startup=10, ephemeral=40))
    assert d.action == "wait"


def test_affine_free_is_always_taken():
    d = decide(busy(0, affine_free=True), estimates())
    assert d.action == "take-affine"


@pytest.mark.parametrize("fallback, expected", [("fail", "fail"), ("ephemeral", "ephemeral"), ("wait", "wait")])
def test_fallback_overrides(fallback, expected):
    d = decide(busy(10_000, fallback=fallback), estimates())
    assert d.action == expected


def test_fallback_wait_spills_then_fails_once_the_wait_is_used_up():
    used_up = dict(waited_seconds=60.0, max_wait_seconds=60.0, fallback="wait")
    assert decide(busy(5, spill_free=True, **used_up), estimates()).action == "spill"
    assert decide(busy(5, spill_free=False, **used_up), estimates()).action == "fail"


def test_untrusted_always_goes_ephemeral_even_with_a_free_affine_slot():
    d = decide(busy(0, affine_free=True, untrusted=True), estimates())
    assert d.action == "ephemeral" and "untrusted" in d.reason


def test_no_warm_builders():
    assert decide(busy(0, warm_builders=0), estimates()).action == "ephemeral"
    assert decide(busy(0, warm_builders=0, fallback="wait"), estimates()).action == "fail"


def test_estimates_use_this_workloads_history_then_the_pools_then_priors():
    assert estimate_paths((), "k") == PathEstimates(
        PRIOR_WARM_SECONDS,
        PRIOR_EPHEMERAL_BUILD_SECONDS,
        PRIOR_EPHEMERAL_STARTUP_SECONDS,
        PRIOR_EPHEMERAL_BUILD_SECONDS,
        "warm from prior, ephemeral from prior",
    )
    history = (
        record("other", "warm", 100),
        record("k", "warm", 10),
        record("k", "warm", 20),
        record("k", "warm", 12),
        record("other", "ephemeral", 90, startup=8),
        record("k", "warm", 999, status="failed"),
    )
    e = estimate_paths(history, "k")
    assert e.warm_seconds == 12  # median of this key's successful warm builds
    assert e.ephemeral_build_seconds == 90 and e.ephemeral_startup_seconds == 8  # from the pool
    assert e.spill_seconds == 90  # no spill history: like an ephemeral build, from the registry cache


def test_slot_wait_is_the_first_holder_expected_to_finish():
    history = (record("fast", "warm", 30), record("slow", "warm", 300))
    assert estimate_slot_wait([("fast", 10.0), ("slow", 10.0)], history) == 20
    assert estimate_slot_wait([], history) == 0


def test_a_holder_past_its_expected_time_is_judged_by_the_longer_builds_of_its_key():
    history = (
        record("k", "warm", 30),
        record("k", "warm", 32),
        record("k", "warm", 31),
        record("k", "warm", 240),
        record("k", "warm", 260),
    )  # dependency changes run long
    assert estimate_slot_wait([("k", 100.0)], history) == 150  # median of the longer ones (250) - 100
    # Nothing known about builds this long: half as long again, never less than a few seconds.
    assert estimate_slot_wait([("k", 600.0)], history) == 300
    assert estimate_slot_wait([("k", 32.0)], (record("k", "warm", 30),)) == 16
    assert estimate_slot_wait([("k", 31.0)], (record("k", "warm", 30),)) >= 5
