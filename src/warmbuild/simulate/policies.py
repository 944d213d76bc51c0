"""Routing policies the simulator compares on the same arrivals.

- `warmbuild`: what `warmbuild build --pool` does, by calling its code: `affinity.preference_order`
  for the affine builder, `affinity.rank_builders` for the spill order, and `policy.decide` with
  `policy.estimate_paths` / `policy.estimate_slot_wait` over the simulation's own running history
  (`records.BuildRecord`s) for take / wait / spill / ephemeral: each look is
  `policy.placement_round`, the round `placement.acquire_build_slot` runs, driven by events here
  instead of polling.
- `sticky`: buildx-style sticky hashing: a consistent-hash ring with one point per builder; a key
  always goes to its ring owner and waits there for as long as it takes (no load awareness).
- `random`: cache-blind load balancing: a free slot on a uniformly random builder, or the next
  slot that frees anywhere (one FIFO queue).
- `dedicated`: one daemon per workload key, started on demand (cold start), scaled to zero after
  an idle timeout; its builds queue for its own slots.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque

from ..pool.affinity import preference_order
from ..pool.policy import POLL_SECONDS, PathEstimates, RoundInputs, estimate_paths, estimate_slot_wait, placement_round
from .engine import Build, BuilderState, Simulation
from .model import POLICIES, DedicatedOptions, WarmbuildOptions


class WarmbuildPolicy:
    name = "warmbuild"
    uses_pool = True
    uses_history = True

    def __init__(self, options: WarmbuildOptions = WarmbuildOptions()):
        self.options = options

    def attach(self, sim: Simulation) -> None:
        self.sim = sim
        self.acquire = sim.fleet.acquire_seconds
        self._affine_cache: dict[str, str] = {}
        self._affine_version = -1
        self._estimates: dict[str, PathEstimates] = {}  # per history snapshot
        self._estimates_version = -1
        self.waiting: dict[int, Build] = {}  # by wait start: FIFO
        self.by_affine: dict[str, dict[int, Build]] = {}
        self._next_check: dict[int, float] = {}
        self.decisions = 0  # policy.decide calls, for benchmarks

    # --- what placement computes ------------------------------------------------------------
    def _affine(self, build: Build, builders: list[BuilderState]) -> BuilderState:
        sim = self.sim
        if self._affine_version != sim.pool_version:
            self._affine_cache.clear()
            self._affine_version = sim.pool_version
        name = self._affine_cache.get(build.route_key)
        if name is None:
            name = preference_order(build.route_key, [b.name for b in builders])[0]
            self._affine_cache[build.route_key] = name
        return sim.builders[name]

    def _estimate(self, key: str) -> PathEstimates:
        history = self.sim.records
        if self._estimates_version != history.version:
            self._estimates.clear()
            self._estimates_version = history.version
        estimates = self._estimates.get(key)
        if estimates is None:
            estimates = self._estimates[key] = estimate_paths(history.relevant((key,)), key)
        return estimates

    def _place(self, build: Build, polled: bool) -> None:
        """One round of placement.acquire_build_slot for `build`, now."""
        sim = self.sim
        now = sim.now
        opts = self.options
        delay = self.acquire + (sim.rng.uniform(0.0, POLL_SECONDS) if polled else 0.0)
        builders = sim.usable()
        affine = self._affine(build, builders) if builders else None
        if affine is not None and affine.free > 0:
            self._stop_waiting(build)
            sim.assign(build, affine, delay, "warm")
            return
        sim.refresh_history()
        waited = now - build.arrived
        if abs(waited - opts.max_wait_seconds) < 1e-6:
            waited = opts.max_wait_seconds  # the recheck at the end of the wait: the budget is spent, not 1e-12 left

        def affine_wait(_name: str) -> float:
            holders = [(held.key, now - held.held_since) for held in affine.held.values()]
            return estimate_slot_wait(holders, sim.records.relevant([key for key, _ in holders]))

        inputs = RoundInputs(
            self._estimate(build.key), waited, opts.max_wait_seconds, opts.fallback, load_factor=opts.load_factor
        )
        capacities = {b.name: b.slots for b in builders}
        in_flight = {b.name: b.busy for b in builders}
        # The affine builder has no free slot here (taken above): the round decides what else to do.
        round_ = placement_round(
            build.route_key,
            capacities,
            {**in_flight, affine.name: affine.slots} if affine else in_flight,
            inputs,
            affine_wait,
            affine=affine.name if affine else None,
        )
        self.decisions += 1
        action = round_.action
        if action == "spill":
            self._stop_waiting(build)
            sim.assign(build, sim.builders[round_.targets[0]], delay, "spill")
            return
        if action == "ephemeral":
            self._stop_waiting(build)
            sim.go_ephemeral(build, delay)
        elif action == "fail" and (builders or waited >= opts.max_wait_seconds):
            self._stop_waiting(build)
            sim.fail(build)
        else:  # wait, or no builders yet: look again
            self._wait(build, affine.name if affine is not None else None)

    # --- waiting ---------------------------------------------------------------------------
    def _wait(self, build: Build, affine: str | None) -> None:
        if build.id in self.waiting and build.affine != affine:
            self.by_affine.get(build.affine, {}).pop(build.id, None)
        self.waiting[build.id] = build
        build.affine = affine
        build.state = "waiting"
        if affine is not None:
            self.by_affine.setdefault(affine, {})[build.id] = build
        deadline = build.arrived + self.options.max_wait_seconds
        now = self.sim.now
        at = now + self.options.recheck_seconds
        if now + 1e-6 < deadline < at:
            at = deadline
        if self._next_check.get(build.id) != at:
            self._next_check[build.id] = at
            self.sim.timer(at, self._recheck, build, at)

    def _stop_waiting(self, build: Build) -> None:
        if self.waiting.pop(build.id, None) is not None:
            self.by_affine.get(build.affine, {}).pop(build.id, None)
            self._next_check.pop(build.id, None)

    def _recheck(self, build: Build, at: float) -> None:
        if self._next_check.get(build.id) == at and build.id in self.waiting:
            self._place(build, polled=True)

    # --- engine hooks ------------------------------------------------------------------------
    def arrive(self, build: Build) -> None:
        self._place(build, polled=False)

    def slot_freed(self, builder: BuilderState) -> None:
        if builder.free <= 0:
            return
        sim = self.sim
        affine_waiters = self.by_affine.get(builder.name)
        while affine_waiters and builder.free > 0:
            # Every waiter polls its affine builder first; whoever polls first wins the slot.
            build = sim.rng.choice(list(affine_waiters.values()))
            self._stop_waiting(build)
            sim.assign(build, builder, self.acquire + sim.rng.uniform(0.0, POLL_SECONDS), "warm")
        for build in list(self.waiting.values()):
            if builder.free <= 0:
                break
            if build.id in self.waiting:
                self._place(build, polled=True)  # a free slot elsewhere may make spilling the better choice

    def pool_changed(self) -> None:
        for build in list(self.waiting.values()):
            if build.id in self.waiting:
                self._place(build, polled=True)


def _ring_point(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class StickyPolicy:
    """Consistent hashing, one ring point per builder; wait for the owner however long it takes."""

    name = "sticky"
    uses_pool = True
    uses_history = False

    def attach(self, sim: Simulation) -> None:
        self.sim = sim
        self.acquire = sim.fleet.acquire_seconds
        self.queues: dict[str, deque[Build]] = {}
        self.orphans: deque[Build] = deque()  # no builder at all
        self._ring_version = -1
        self._points: list[int] = []
        self._owners: list[str] = []
        self._owner_cache: dict[str, str] = {}

    def _owner(self, build: Build) -> BuilderState | None:
        sim = self.sim
        if self._ring_version != sim.pool_version:
            ring = sorted((_ring_point(b.name), b.name) for b in sim.usable())
            self._points = [p for p, _ in ring]
            self._owners = [n for _, n in ring]
            self._owner_cache.clear()
            self._ring_version = sim.pool_version
        if not self._owners:
            return None
        name = self._owner_cache.get(build.route_key)
        if name is None:
            index = bisect.bisect_right(self._points, _ring_point(build.route_key)) % len(self._points)
            name = self._owner_cache[build.route_key] = self._owners[index]
        return sim.builders[name]

    def arrive(self, build: Build) -> None:
        owner = self._owner(build)
        if owner is None:
            build.state = "waiting"
            self.orphans.append(build)
        elif owner.free > 0 and not self.queues.get(owner.name):
            self.sim.assign(build, owner, self.acquire, "pool")
        else:
            build.state = "waiting"
            self.queues.setdefault(owner.name, deque()).append(build)

    def slot_freed(self, builder: BuilderState) -> None:
        queue = self.queues.get(builder.name)
        while queue and builder.free > 0:
            self.sim.assign(queue.popleft(), builder, self.acquire, "pool")

    def pool_changed(self) -> None:
        moved = list(self.orphans)
        self.orphans.clear()
        for name in list(self.queues):
            builder = self.sim.builders.get(name)
            if builder is None or not builder.usable:
                moved.extend(self.queues.pop(name))
        for build in sorted(moved, key=lambda b: (b.arrived, b.id)):
            build.state = "new"
            self.arrive(build)
        for builder in self.sim.usable():
            self.slot_freed(builder)


class RandomPolicy:
    """Load-aware but cache-blind: a free slot on a random builder, else the first slot that frees."""

    name = "random"
    uses_pool = True
    uses_history = False

    def attach(self, sim: Simulation) -> None:
        self.sim = sim
        self.acquire = sim.fleet.acquire_seconds
        self.queue: deque[Build] = deque()

    def arrive(self, build: Build) -> None:
        free = [b for b in self.sim.usable() if b.free > 0]
        if free and not self.queue:
            self.sim.assign(build, self.sim.rng.choice(free), self.acquire, "pool")
        else:
            build.state = "waiting"
            self.queue.append(build)

    def slot_freed(self, builder: BuilderState) -> None:
        while self.queue and builder.free > 0:
            self.sim.assign(self.queue.popleft(), builder, self.acquire, "pool")

    def pool_changed(self) -> None:
        for builder in self.sim.usable():
            self.slot_freed(builder)


class _Daemon:
    __slots__ = ("key", "builder", "queue", "idle_at", "volume")

    def __init__(self, key: str):
        self.key = key
        self.builder: BuilderState | None = None
        self.queue: deque[Build] = deque()
        self.idle_at: float | None = None
        self.volume: tuple[str, ...] = ()  # what its cache held when it scaled to zero


class DedicatedPolicy:
    """One BuildKit daemon per workload key, scaled to zero after `idle_timeout_seconds`."""

    name = "dedicated"
    uses_pool = False
    uses_history = False

    def __init__(self, options: DedicatedOptions = DedicatedOptions()):
        self.options = options

    def attach(self, sim: Simulation) -> None:
        self.sim = sim
        self.acquire = sim.fleet.acquire_seconds
        self.daemons: dict[str, _Daemon] = {}
        self.by_builder: dict[str, _Daemon] = {}
        self.cold_starts = 0

    def arrive(self, build: Build) -> None:
        sim = self.sim
        daemon = self.daemons.get(build.key)
        if daemon is None:
            daemon = self.daemons[build.key] = _Daemon(build.key)
        daemon.idle_at = None
        if daemon.builder is None:
            self.cold_starts += 1
            name = f"dedicated-{build.key}"
            builder = sim.add_builder(name, sim.fleet.slots, max(1, sim.fleet.cache_keys), daemon.volume, ready=False)
            daemon.builder = builder
            self.by_builder[name] = daemon
            startup = self.options.startup_seconds
            if startup is None:
                startup = build.profile.ephemeral_startup_seconds
            sim.timer(sim.now + startup, self._ready, daemon, builder)
        if daemon.builder.ready and daemon.builder.free > 0 and not daemon.queue:
            sim.assign(build, daemon.builder, self.acquire, "dedicated")
        else:
            build.state = "waiting"
            daemon.queue.append(build)

    def _ready(self, daemon: _Daemon, builder: BuilderState) -> None:
        sim = self.sim
        sim.set_ready(builder)
        for build in daemon.queue:
            build.startup = sim.now - build.arrived  # it waited for the daemon to start
        self.slot_freed(builder)

    def slot_freed(self, builder: BuilderState) -> None:
        sim = self.sim
        daemon = self.by_builder[builder.name]
        while daemon.queue and builder.free > 0:
            sim.assign(daemon.queue.popleft(), builder, self.acquire, "dedicated")
        if builder.busy == 0 and not daemon.queue:
            daemon.idle_at = at = sim.now + self.options.idle_timeout_seconds
            sim.timer(at, self._idle, daemon, at)

    def _idle(self, daemon: _Daemon, at: float) -> None:
        builder = daemon.builder
        if daemon.idle_at != at or builder is None or builder.busy or daemon.queue:
            return
        daemon.volume = tuple(builder.lru) if self.options.keep_cache else ()
        self.sim.remove_builder(builder)
        del self.by_builder[builder.name]
        daemon.builder = None
        daemon.idle_at = None

    def pool_changed(self) -> None:
        pass


def make_policy(
    name: str, warmbuild: WarmbuildOptions = WarmbuildOptions(), dedicated: DedicatedOptions = DedicatedOptions()
):
    if name == "warmbuild":
        return WarmbuildPolicy(warmbuild)
    if name == "sticky":
        return StickyPolicy()
    if name == "random":
        return RandomPolicy()
    if name == "dedicated":
        return DedicatedPolicy(dedicated)
    raise ValueError(f"unknown policy {name!r}: choose from {', '.join(POLICIES)}")
