"""The placement policy: wait for the affine warm slot, spill to another warm builder, or go
ephemeral — whichever is expected to finish first. Pure logic.

`placement_round` is one look at the pool, the same for `placement.acquire_build_slot` (which
polls the cluster) and the simulator's `warmbuild` policy (which is driven by events): the key's
affine builder if it has a free slot, else `decide` between waiting, spilling along the key's
bounded-load ranking, an ephemeral builder, or giving up.

Expected completion of each option, from this workload's recent builds (history) with priors when
there is none:
  wait       the affine slot's expected wait + a warm build
  spill      a build on another warm builder (its cache is colder: it imports the registry cache)
  ephemeral  starting a BuildKit pod + a build from the registry cache
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from .affinity import DEFAULT_LOAD_FACTOR, preference_order, rank_builders
from .records import BuildRecord

PRIOR_WARM_SECONDS = 60.0
PRIOR_EPHEMERAL_BUILD_SECONDS = 180.0
PRIOR_EPHEMERAL_STARTUP_SECONDS = 20.0
OVERRUN_REMAINING_SECONDS = 5.0  # the least a running build is assumed to still need
RECENT = 10
POLL_SECONDS = 0.5  # a waiting build looks at the pool again after 0.5–1.5 × this

FALLBACKS = ("auto", "wait", "ephemeral", "fail")

# A builder marked unhealthy (its solve failed for an infrastructure reason) is left out of placement
# for this long after the mark; then it is tried again, and a build that succeeds there clears it.
UNHEALTHY_COOLDOWN_SECONDS = 120.0
# A mark dated later than the API server's now plus this is ignored: whoever can write Leases must
# not keep a builder out longer than one cool-down per write.
MARK_CLOCK_SKEW_SECONDS = 5.0


@dataclass(frozen=True)
class HealthMark:
    """A builder's unhealthy mark as read from its health Lease (kube/names: UNHEALTHY_*)."""

    builder: str
    reason: str
    since: datetime  # API-server time of the mark
    by: str = ""  # who marked it (holder identity, CI run URL)

    def until(self, cooldown: float = UNHEALTHY_COOLDOWN_SECONDS) -> datetime:
        return self.since + timedelta(seconds=cooldown)


def cooling_down(mark: HealthMark, now: datetime, cooldown: float = UNHEALTHY_COOLDOWN_SECONDS) -> bool:
    """Whether the mark keeps its builder out of placement at `now` (API-server time)."""
    if mark.since > now + timedelta(seconds=MARK_CLOCK_SKEW_SECONDS):
        return False  # dated in the future: not a mark warmbuild wrote, ignored
    return now < mark.until(cooldown)


def out_of_rotation(
    builders: Iterable[str],
    marks: Mapping[str, HealthMark],
    avoid: Iterable[str],
    now: datetime,
    cooldown: float = UNHEALTHY_COOLDOWN_SECONDS,
) -> dict[str, str]:
    """The builders placement skips this round, each with why: those this build already lost
    (`avoid`: a retry never goes back to the builder that failed it) and those cooling down after an
    unhealthy mark. The rest are the rotation."""
    avoided = set(avoid)
    skipped: dict[str, str] = {}
    for name in builders:
        mark = marks.get(name)
        if name in avoided:
            skipped[name] = "lost by an earlier attempt of this build"
        elif mark is not None and cooling_down(mark, now, cooldown):
            left = (mark.until(cooldown) - now).total_seconds()
            skipped[name] = f"unhealthy ({mark.reason}), back in {left:.0f}s"
    return skipped


@dataclass(frozen=True)
class PathEstimates:
    warm_seconds: float
    spill_seconds: float
    ephemeral_startup_seconds: float
    ephemeral_build_seconds: float
    basis: str  # where the numbers come from, for the report

    @property
    def ephemeral_seconds(self) -> float:
        return self.ephemeral_startup_seconds + self.ephemeral_build_seconds


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _recent(records: Iterable[BuildRecord], path: str, key: str | None = None) -> list[float]:
    chosen = [r for r in records if r.path == path and r.status == "success" and (key is None or r.key == key)]
    return [r.build_seconds for r in chosen[-RECENT:]]


def _estimate(records: tuple[BuildRecord, ...], key: str, path: str, prior: float) -> tuple[float, str]:
    own = _median(_recent(records, path, key))
    if own is not None:
        return own, "this workload"
    pool = _median(_recent(records, path))
    if pool is not None:
        return pool, "the pool"
    return prior, "prior"


def estimate_paths(records: tuple[BuildRecord, ...], key: str) -> PathEstimates:
    warm, warm_from = _estimate(records, key, "warm", PRIOR_WARM_SECONDS)
    ephemeral, eph_from = _estimate(records, key, "ephemeral", PRIOR_EPHEMERAL_BUILD_SECONDS)
    spill_own = _median(_recent(records, "spill", key))
    spill = spill_own if spill_own is not None else ephemeral  # both build from the registry cache
    startups = [r.startup_seconds for r in records if r.path == "ephemeral" and r.status == "success"][-RECENT:]
    startup = _median(startups) or PRIOR_EPHEMERAL_STARTUP_SECONDS
    return PathEstimates(
        warm_seconds=warm,
        spill_seconds=spill,
        ephemeral_startup_seconds=startup,
        ephemeral_build_seconds=ephemeral,
        basis=f"warm from {warm_from}, ephemeral from {eph_from}",
    )


def expected_warm_duration(records: tuple[BuildRecord, ...], key: str) -> float:
    return _estimate(records, key, "warm", PRIOR_WARM_SECONDS)[0]


def expected_remaining(records: tuple[BuildRecord, ...], key: str, held: float) -> float:
    """How much longer a build of `key` that has run `held` seconds will take.

    Within its expected time: the rest of it. Past it (a dependency change, a cold cache): the
    median of this key's recent warm builds that ran longer than `held`, else — nothing known about
    builds this long — as long again as half of what it has run (long builds tend to run long),
    and never less than a few seconds.
    """
    left = expected_warm_duration(records, key) - held
    if left > 0:
        return left
    tail = _median(d for d in _recent(records, "warm", key) if d > held)
    if tail is not None:
        return max(OVERRUN_REMAINING_SECONDS, tail - held)
    return max(OVERRUN_REMAINING_SECONDS, 0.5 * held)


def estimate_slot_wait(holders: Iterable[tuple[str, float]], records: tuple[BuildRecord, ...]) -> float:
    """Seconds until the first of a builder's slots frees: holders are (workload key hash, seconds held)."""
    remaining = [expected_remaining(records, key, held) for key, held in holders]
    return min(remaining) if remaining else 0.0


@dataclass(frozen=True)
class Situation:
    affine_builder: str
    affine_free: bool
    affine_wait_seconds: float  # estimated, when busy
    spill_free: bool  # another warm builder has a free slot
    waited_seconds: float
    max_wait_seconds: float
    fallback: str = "auto"
    untrusted: bool = False
    warm_builders: int = 1  # ready warm builders in the pool


@dataclass(frozen=True)
class Decision:
    action: str  # take-affine | wait | spill | ephemeral | fail
    expected_seconds: float
    reason: str


def decide(s: Situation, e: PathEstimates) -> Decision:
    if s.untrusted:
        return Decision(
            "ephemeral", e.ephemeral_seconds, "untrusted build: ephemeral builder, registry cache import only"
        )
    if s.warm_builders == 0:
        if s.fallback in ("auto", "ephemeral"):
            return Decision("ephemeral", e.ephemeral_seconds, "no ready warm builders; ephemeral builder")
        return Decision("fail", 0.0, "no ready warm builders in the pool")
    if s.affine_free:
        return Decision("take-affine", e.warm_seconds, f"affine builder {s.affine_builder}")
    busy = f"affine builder {s.affine_builder} busy for ~{s.affine_wait_seconds:.0f}s"
    if s.fallback == "fail":
        return Decision("fail", 0.0, f"{busy}; --fallback fail")
    if s.fallback == "ephemeral":
        return Decision("ephemeral", e.ephemeral_seconds, f"{busy}; --fallback ephemeral")
    budget = s.max_wait_seconds - s.waited_seconds
    if s.fallback == "wait":
        if budget > 0:
            return Decision("wait", s.affine_wait_seconds + e.warm_seconds, f"{busy}; waiting (--fallback wait)")
        if s.spill_free:
            return Decision("spill", e.spill_seconds, f"{busy}; waited {s.waited_seconds:.0f}s; spilled")
        return Decision("fail", 0.0, f"all warm slots stayed busy for {s.waited_seconds:.0f}s (--fallback wait)")

    options: list[tuple[float, int, str]] = []  # (expected seconds, preference on ties, action)
    if budget > 0 and s.affine_wait_seconds <= budget:
        options.append((s.affine_wait_seconds + e.warm_seconds, 0, "wait"))
    if s.spill_free:
        options.append((e.spill_seconds, 1, "spill"))
    options.append((e.ephemeral_seconds, 2, "ephemeral"))
    expected, _, action = min(options)
    described = {
        "wait": f"wait expected {s.affine_wait_seconds + e.warm_seconds:.0f}s",
        "spill": f"spill expected {e.spill_seconds:.0f}s",
        "ephemeral": f"ephemeral expected {e.ephemeral_seconds:.0f}s",
    }
    others = "; ".join(described[a] for _, _, a in sorted(options) if a != action)
    verb = {"wait": "waited", "spill": "spilled", "ephemeral": "went ephemeral"}[action]
    reason = f"{busy}; {described[action]}" + (f"; {others}" if others else "") + f"; {verb}"
    return Decision(action, expected, reason)


@dataclass(frozen=True)
class Round:
    """What one placement round chose. `targets`: the builders to try a slot on, in order."""

    action: str  # take-affine | wait | spill | ephemeral | fail
    affine: str | None
    targets: tuple[str, ...]
    decision: Decision | None  # None when the affine builder's free slot was simply taken


@dataclass(frozen=True)
class RoundInputs:
    """What a round needs besides the pool's load: the build's settings and its estimates."""

    estimates: PathEstimates
    waited_seconds: float
    max_wait_seconds: float
    fallback: str = "auto"
    untrusted: bool = False
    load_factor: float = DEFAULT_LOAD_FACTOR


def placement_round(
    key: str,
    capacities: Mapping[str, int],
    in_flight: Mapping[str, int],
    inputs: RoundInputs,
    affine_wait: Callable[[str], float],
    affine: str | None = None,
) -> Round:
    """One round for a build of `key` over the ready warm builders (`capacities`: slots each;
    `in_flight`: slots held each). `affine_wait(builder)` estimates when the busy affine builder
    frees a slot; `affine` may pass the key's first choice when the caller has it cached."""
    situation = Situation(
        affine_builder="-",
        affine_free=False,
        affine_wait_seconds=0.0,
        spill_free=False,
        waited_seconds=inputs.waited_seconds,
        max_wait_seconds=inputs.max_wait_seconds,
        fallback=inputs.fallback,
        untrusted=inputs.untrusted,
        warm_builders=len(capacities),
    )
    if not capacities:
        decision = decide(situation, inputs.estimates)
        return Round(decision.action, None, (), decision)
    affine = affine or preference_order(key, capacities)[0]

    def free(name: str) -> bool:
        return in_flight.get(name, 0) < capacities[name]

    if not inputs.untrusted and free(affine):
        return Round("take-affine", affine, (affine,), None)
    situation = Situation(
        affine_builder=affine,
        affine_free=False,
        affine_wait_seconds=affine_wait(affine),
        spill_free=any(free(n) for n in capacities if n != affine),
        waited_seconds=situation.waited_seconds,
        max_wait_seconds=situation.max_wait_seconds,
        fallback=situation.fallback,
        untrusted=situation.untrusted,
        warm_builders=situation.warm_builders,
    )
    decision = decide(situation, inputs.estimates)
    targets: tuple[str, ...] = ()
    if decision.action == "spill":
        ranked = rank_builders(key, capacities, in_flight, inputs.load_factor)
        targets = tuple(n for n in ranked if n != affine and free(n))
    return Round(decision.action, affine, targets, decision)
