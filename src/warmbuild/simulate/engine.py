"""The event loop of a fleet simulation: builders, slots, caches and time; policies decide.

One `Simulation` runs one policy over one workload. Events are kept in a heap ordered by
(time, sequence number), so equal times are handled in the order they were scheduled and a run is a
pure function of its inputs and seed.

What the engine owns, the same for every policy:
- builders with a slot count, a busy count (slots reserved or running), and an LRU of the workload
  keys whose layers their cache holds (capacity `FleetConfig.cache_keys`); a build is a cache hit
  when its key is in the LRU when it starts, and its key becomes the most recent one;
- the durations of builds (`KeyProfile`, the arrival's jitter, the change kind, the slot slowdown);
- ephemeral builders (no slots: one pod per build, startup + build);
- scale events: builders joining (cold), draining (no new builds, leave when empty), crashing
  (their builds learn it at the next lease renewal, end `aborted`, and are retried);
- the pool's running build history, as `warmbuild.history.BuildRecord`s, which the warmbuild
  policy reads like `warmbuild build` does (a snapshot at most 30 s old, the newest 1000 records);
- invariants: a builder never has more builds than slots, and a build ends exactly once
  (`InvariantViolation` otherwise).
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from ..pool.policy import RECENT
from ..pool.records import HISTORY_REFRESH_SECONDS, MAX_RECORDS, BuildRecord
from .model import (
    DEFAULT_ACQUIRE_SECONDS,
    Arrival,
    BuilderUsage,
    BuildOutcome,
    FleetConfig,
    KeyProfile,
    PolicyRun,
    SimulationConfig,
    Workload,
)

_ARRIVE, _START, _FINISH, _TIMER, _SCALE, _ABORT = range(6)

WARM_CACHE_RATIO = 0.9  # what a simulated build reports as its cache ratio in the running history
COLD_CACHE_RATIO = 0.3


class InvariantViolation(AssertionError):
    """The simulation broke one of its own rules: a bug, never a property of the workload."""


class Build:
    """One build attempt while it is in the simulation (mutable; becomes a BuildOutcome)."""

    __slots__ = (
        "id",
        "arrival",
        "key",
        "route_key",
        "profile",
        "arrived",
        "state",
        "path",
        "builder",
        "startup",
        "held_since",
        "started",
        "token",
        "affine",
        "ended",
    )

    def __init__(self, build_id: int, arrival: Arrival, route_key: str, profile: KeyProfile, arrived: float):
        self.id = build_id
        self.arrival = arrival
        self.key = arrival.key
        self.route_key = route_key
        self.profile = profile
        self.arrived = arrived
        self.state = "new"  # new | waiting | reserved | running | ended
        self.path = "none"
        self.builder: BuilderState | None = None
        self.startup = 0.0
        self.held_since = 0.0  # when it got its slot: when its lease was acquired
        self.started = 0.0
        self.token = 0  # bumped to cancel this build's pending events
        self.affine: str | None = None  # policy scratch: the builder it waits for
        self.ended = False


class BuilderState:
    __slots__ = (
        "name",
        "slots",
        "cache_keys",
        "lru",
        "held",
        "running",
        "draining",
        "gone",
        "joined",
        "left",
        "busy_slot_seconds",
        "builds",
        "ready",
    )

    def __init__(self, name: str, slots: int, cache_keys: int, joined: float, warm_keys=()):
        self.name = name
        self.slots = slots
        self.cache_keys = cache_keys
        self.lru: OrderedDict[str, None] = OrderedDict((k, None) for k in warm_keys)
        self.held: dict[int, Build] = {}  # slot leases: granted (starting) or running
        self.running: dict[int, Build] = {}
        self.draining = False
        self.gone = False
        self.ready = True
        self.joined = joined
        self.left: float | None = None
        self.busy_slot_seconds = 0.0
        self.builds = 0

    @property
    def busy(self) -> int:
        return len(self.held)

    @property
    def free(self) -> int:
        return self.slots - self.busy if self.ready and not self.draining and not self.gone else 0

    @property
    def usable(self) -> bool:
        return self.ready and not self.draining and not self.gone


class Policy(Protocol):
    name: str
    uses_pool: bool  # the engine creates FleetConfig.builders builders and applies scale events
    uses_history: bool

    def attach(self, sim: Simulation) -> None: ...
    def arrive(self, build: Build) -> None: ...
    def slot_freed(self, builder: BuilderState) -> None: ...
    def pool_changed(self) -> None: ...


class Simulation:
    def __init__(self, workload: Workload, policy: Policy, config: SimulationConfig):
        self.workload = workload
        self.policy = policy
        self.config = config
        acquire = config.fleet.acquire_seconds
        if acquire is None:
            acquire = workload.acquire_seconds if workload.acquire_seconds is not None else DEFAULT_ACQUIRE_SECONDS
        self.fleet: FleetConfig = replace(config.fleet, acquire_seconds=acquire)
        self.rng = random.Random(f"{config.seed}/{policy.name}")
        self.now = 0.0
        self._heap: list = []
        self._seq = 0
        self._next_build = 0
        self.builders: dict[str, BuilderState] = {}
        self.retired: list[BuilderState] = []
        self.pool_version = 0
        self._usable: list[BuilderState] | None = None
        self.outcomes: list[BuildOutcome] = []
        self.records = HistoryIndex()
        self._snapshot_at: float | None = None
        self.ephemeral_seconds = 0.0
        self.events = 0
        self._open: dict[int, Build] = {}
        self._volumes: dict[str, list[str]] = {}  # a departed pool builder's cache, by name

    # --- scheduling -------------------------------------------------------------------------
    def _push(self, at: float, kind: int, payload) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def timer(self, at: float, callback: Callable, *args) -> None:
        """Call `callback(*args)` at simulated time `at`."""
        self._push(max(at, self.now), _TIMER, (callback, args))

    # --- the pool -------------------------------------------------------------------------
    def add_builder(self, name: str, slots: int, cache_keys: int, warm_keys=(), ready: bool = True) -> BuilderState:
        if name in self.builders:
            raise InvariantViolation(f"builder {name} added twice")
        builder = BuilderState(name, slots, cache_keys, self.now, warm_keys)
        builder.ready = ready
        self.builders[name] = builder
        self._pool_changed()
        return builder

    def set_ready(self, builder: BuilderState) -> None:
        builder.ready = True
        self._pool_changed()

    def remove_builder(self, builder: BuilderState) -> None:
        if builder.gone:
            return
        builder.gone = True
        builder.left = self.now
        self._volumes[builder.name] = list(builder.lru)
        del self.builders[builder.name]
        self.retired.append(builder)
        self._pool_changed()

    def _pool_changed(self) -> None:
        self.pool_version += 1
        self._usable = None

    def usable(self) -> list[BuilderState]:
        """Builders that take new builds: Ready, not draining, not gone, in name order (discovery's order)."""
        if self._usable is None:
            self._usable = sorted((b for b in self.builders.values() if b.usable), key=lambda b: b.name)
        return self._usable

    def _new_pool_name(self) -> tuple[str, tuple[str, ...]]:
        """The lowest ordinal not in the pool, as a StatefulSet scales up; a name that was here
        before gets its volume back (PVCs are retained), so its cache is warm again."""
        names = (
            self.fleet.names()
            if self.fleet.builder_names
            else (self.workload.builder_names + tuple(f"builders-{i}" for i in range(self.fleet.builders)))
        )
        ordinal = 0
        while True:
            name = names[ordinal] if ordinal < len(names) else f"builders-{ordinal}"
            if name not in self.builders:
                break
            ordinal += 1
        return name, tuple(self._volumes.get(name, ()))

    # --- build lifecycle ---------------------------------------------------------------------
    def assign(self, build: Build, builder: BuilderState, delay: float, path: str) -> None:
        """Give `build` a slot of `builder` now (the lease is ours); it starts after `delay`."""
        if build.state in ("reserved", "running", "ended"):
            raise InvariantViolation(f"build {build.id} assigned while {build.state}")
        if not builder.usable:
            raise InvariantViolation(f"build {build.id} assigned to unusable builder {builder.name}")
        builder.held[build.id] = build
        if len(builder.held) > builder.slots:
            raise InvariantViolation(f"{builder.name} has {builder.busy} builds on {builder.slots} slots")
        build.state = "reserved"
        build.path = path
        build.builder = builder
        build.held_since = self.now
        self._push(self.now + delay, _START, (build, build.token))

    def go_ephemeral(self, build: Build, delay: float) -> None:
        if build.state in ("reserved", "running", "ended"):
            raise InvariantViolation(f"build {build.id} sent to an ephemeral builder while {build.state}")
        build.state = "reserved"
        build.path = "ephemeral"
        build.builder = None
        start = self.now + delay
        build.startup = build.profile.ephemeral_startup_seconds
        self._push(start + build.startup, _START, (build, build.token))

    def fail(self, build: Build, status: str = "failed") -> None:
        """The build ends without having run (no slot within its wait)."""
        build.path = "none"
        build.builder = None
        self._end(build, self.now, started=self.now, build_seconds=0.0, warm=False, status=status)

    def _start(self, build: Build) -> None:
        build.state = "running"
        build.started = self.now
        builder = build.builder
        profile = build.profile
        change = build.arrival.change
        if builder is None:  # ephemeral
            seconds = profile.build_seconds(False, True, change) * build.arrival.jitter
            build.builder = None
            self.ephemeral_seconds += build.startup + seconds
            self._push(self.now + seconds, _FINISH, (build, build.token, False, seconds))
            return
        lru = builder.lru
        warm = build.key in lru
        if warm:
            lru.move_to_end(build.key)
        else:
            lru[build.key] = None
            while len(lru) > builder.cache_keys:
                lru.popitem(last=False)
        others = len(builder.running)
        seconds = profile.build_seconds(warm, False, change) * build.arrival.jitter
        if self.fleet.slot_slowdown and others:
            seconds *= 1.0 + self.fleet.slot_slowdown * others
        builder.running[build.id] = build
        self._push(self.now + seconds, _FINISH, (build, build.token, warm, seconds))

    def _finish(self, build: Build, warm: bool, seconds: float) -> None:
        builder = build.builder
        started = build.started
        if builder is not None:
            del builder.running[build.id]
            del builder.held[build.id]
            builder.busy_slot_seconds += seconds
            builder.builds += 1
        self._end(build, self.now, started=started, build_seconds=seconds, warm=warm, status="success")
        if builder is not None:
            if builder.draining and builder.busy == 0:
                self.remove_builder(builder)
                self.policy.pool_changed()
            elif not builder.gone:
                self.policy.slot_freed(builder)

    def _end(self, build: Build, at: float, *, started: float, build_seconds: float, warm: bool, status: str) -> None:
        if build.ended:
            raise InvariantViolation(f"build {build.id} ended twice")
        build.ended = True
        build.state = "ended"
        build.token += 1
        del self._open[build.id]
        queue = max(0.0, started - build.arrived - build.startup)
        outcome = BuildOutcome(
            build=build.id,
            arrival=build.arrival.index,
            key=build.key,
            path=build.path,
            builder=build.builder.name if build.builder is not None else None,
            warm_cache=warm,
            arrived=build.arrived,
            started=started,
            ended=at,
            queue_seconds=queue,
            startup_seconds=build.startup,
            build_seconds=build_seconds,
            status=status,
        )
        self.outcomes.append(outcome)
        if self.policy.uses_history and status != "failed":
            self.records.append(
                BuildRecord(
                    key=build.key,
                    started=started,
                    path=build.path if build.path in ("warm", "spill", "ephemeral") else "warm",
                    builder=outcome.builder or "ephemeral",
                    queue_seconds=queue,
                    startup_seconds=build.startup,
                    build_seconds=build_seconds,
                    total_seconds=at - build.arrived,
                    cache_ratio=WARM_CACHE_RATIO if warm else COLD_CACHE_RATIO,
                    status="success" if status == "success" else "failed",
                )
            )

    def _abort(self, build: Build, at_start: float) -> None:
        """Its builder crashed: the holder learns at its next renewal (fencing) and exits 8."""
        self._end(
            build, self.now, started=at_start, build_seconds=max(0.0, self.now - at_start), warm=False, status="aborted"
        )
        if self.fleet.retry_aborted:
            self._new_build(build.arrival, self.now)

    # --- history --------------------------------------------------------------------------
    @property
    def history_version(self) -> int:
        return self.records.version

    def refresh_history(self) -> None:
        """Placement reads the pool's history when it starts and every 30 s: a snapshot that old."""
        if self._snapshot_at is None or self.now - self._snapshot_at >= HISTORY_REFRESH_SECONDS:
            self.records.snapshot()
            self._snapshot_at = self.now

    # --- scale events ---------------------------------------------------------------------
    def _scale(self, action: str, count: int) -> None:
        if action == "join":
            for _ in range(count):
                name, warm_keys = self._new_pool_name()
                self.add_builder(name, self.fleet.slots, self.fleet.cache_keys, warm_keys)
        elif action in ("drain", "crash"):
            victims = sorted(self.usable(), key=lambda b: _ordinal(b.name), reverse=True)[:count]
            for builder in victims:
                if action == "drain":
                    builder.draining = True
                    if builder.busy == 0:
                        self.remove_builder(builder)
                    continue
                for build in list(builder.held.values()):
                    self._crash_build(build)
                builder.held.clear()
                builder.running.clear()
                self.remove_builder(builder)
            self._pool_changed()
        else:
            raise ValueError(f"unknown scale action {action}")
        self.policy.pool_changed()

    def _crash_build(self, build: Build) -> None:
        build.token += 1  # its pending start or finish never happens
        renew = self.fleet.lease_seconds / 3.0
        started = self.now if build.state == "reserved" else build.started
        self._push(self.now + self.rng.uniform(0.0, renew), _ABORT, (build, build.token, started))

    # --- the loop -------------------------------------------------------------------------
    def _new_build(self, arrival: Arrival, at: float) -> None:
        profile = self.workload.profiles[arrival.key]
        route_key = self.workload.route_keys.get(arrival.key, arrival.key)
        build = Build(self._next_build, arrival, route_key, profile, at)
        self._next_build += 1
        self._open[build.id] = build
        self._push(at, _ARRIVE, build)

    def run(self) -> PolicyRun:
        if self.policy.uses_pool:
            for _ in range(self.fleet.builders):
                name, warm_keys = self._new_pool_name()
                self.add_builder(name, self.fleet.slots, self.fleet.cache_keys, warm_keys)
            for event in self.fleet.scale_events:
                self._push(event.time, _SCALE, (event.action, event.count))
        self.policy.attach(self)
        for arrival in self.workload.arrivals:
            self._new_build(arrival, arrival.time)
        heap = self._heap
        pop = heapq.heappop
        while heap:
            at, _, kind, payload = pop(heap)
            self.now = at
            self.events += 1
            if kind == _ARRIVE:
                payload.state = "new"
                self.policy.arrive(payload)
            elif kind == _FINISH:
                build, token, warm, seconds = payload
                if token == build.token:
                    self._finish(build, warm, seconds)
            elif kind == _START:
                build, token = payload
                if token == build.token:
                    self._start(build)
            elif kind == _TIMER:
                callback, args = payload
                callback(*args)
            elif kind == _SCALE:
                self._scale(*payload)
            elif kind == _ABORT:
                build, token, started = payload
                if token == build.token:
                    self._abort(build, started)
        for build in list(self._open.values()):
            if build.state != "waiting":
                raise InvariantViolation(f"build {build.id} never ended ({build.state})")
            self.fail(build)  # still waiting when nothing else can happen: no builder will ever take it
        horizon = max([self.workload.horizon, self.now] + [o.ended for o in self.outcomes[-1:]])
        usage = []
        for builder in [*self.retired, *self.builders.values()]:
            usage.append(
                BuilderUsage(
                    name=builder.name,
                    slots=builder.slots,
                    joined=builder.joined,
                    left=builder.left if builder.left is not None else horizon,
                    busy_slot_seconds=builder.busy_slot_seconds,
                    builds=builder.builds,
                )
            )
        return PolicyRun(
            policy=self.policy.name,
            outcomes=tuple(sorted(self.outcomes, key=lambda o: o.build)),
            builders=tuple(usage),
            ephemeral_seconds=self.ephemeral_seconds,
            horizon=horizon,
            events=self.events,
        )


def _ordinal(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (-1, name)


class HistoryIndex:
    """The pool's build history (the newest `MAX_RECORDS`, as the ConfigMap keeps them), indexed
    so the policy functions can be given only the records they can look at.

    `warmbuild.policy` estimates from the newest `RECENT` successful records of a path, for one
    workload key or for the whole pool (and the newest `RECENT` ephemeral startups). `relevant(keys)`
    returns, from the current snapshot and in history order, exactly those records for the given keys
    and for the pool, so `estimate_paths(relevant([k]), k)` equals `estimate_paths(snapshot, k)` and
    likewise `estimate_slot_wait` — at the cost of ~50 records instead of 1000.
    tests/unit/test_simulate.py checks that equality on random histories.
    """

    PATHS = ("warm", "spill", "ephemeral")

    def __init__(self, max_records: int = MAX_RECORDS, recent: int = RECENT):
        self.max_records = max_records
        self.recent = recent
        self._all: list[BuildRecord] = []
        self._by: dict[tuple, tuple[list[int], list[BuildRecord]]] = {}  # (path,) or (path, key) -> (seqs, records)
        self.version = 0
        self._cutoff = 0
        self._window_start = 0
        self._cache: dict[tuple, list[tuple[int, BuildRecord]]] = {}  # _newest, for the current snapshot
        self._relevant: dict[tuple, tuple[BuildRecord, ...]] = {}  # relevant, for the current snapshot

    def append(self, record: BuildRecord) -> None:
        seq = len(self._all)
        self._all.append(record)
        if record.status == "success" and record.path in self.PATHS:
            for index in ((record.path,), (record.path, record.key)):
                seqs, records = self._by.setdefault(index, ([], []))
                seqs.append(seq)
                records.append(record)

    def snapshot(self) -> None:
        if self._cutoff != len(self._all) or self.version == 0:
            self._cutoff = len(self._all)
            self._window_start = max(0, self._cutoff - self.max_records)
            self.version += 1
            self._cache = {}
            self._relevant = {}

    def snapshot_records(self) -> tuple[BuildRecord, ...]:
        return tuple(self._all[self._window_start : self._cutoff])

    def _newest(self, index: tuple) -> list[tuple[int, BuildRecord]]:
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        entry = self._by.get(index)
        if entry is None:
            newest = []
        else:
            seqs, records = entry
            end = bisect.bisect_left(seqs, self._cutoff)
            begin = max(bisect.bisect_left(seqs, self._window_start), end - self.recent)
            newest = list(zip(seqs[begin:end], records[begin:end]))
        self._cache[index] = newest
        return newest

    def relevant(self, keys) -> tuple[BuildRecord, ...]:
        keys = tuple(keys)
        cached = self._relevant.get(keys)
        if cached is not None:
            return cached
        chosen: dict[int, BuildRecord] = {}
        for path in self.PATHS:
            chosen.update(self._newest((path,)))
            for key in keys:
                chosen.update(self._newest((path, key)))
        relevant = self._relevant[keys] = tuple([chosen[seq] for seq in sorted(chosen)])
        return relevant
