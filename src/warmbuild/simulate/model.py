"""What a fleet simulation is made of and what it yields: pure data, no behaviour beyond arithmetic.

Times are seconds from the start of the simulated period; durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHANGES = ("code", "deps")
POLICIES = ("warmbuild", "sticky", "random", "dedicated")  # routing policies, made by policies.make_policy
DEFAULT_ACQUIRE_SECONDS = 0.05  # a code-only change, or one that touches the dependency layers


@dataclass(frozen=True)
class KeyProfile:
    """How long one workload's builds take, by where they run.

    warm       on a builder whose local cache holds this workload (a code-only change)
    spill      on a warm builder without it: the cold-cache penalty (registry import, re-run layers)
    ephemeral  the build on a fresh ephemeral builder (registry cache import), after its startup
    deps_extra added to any of them when the change touches the dependency layers
    """

    key: str
    warm_seconds: float
    spill_seconds: float
    ephemeral_seconds: float
    ephemeral_startup_seconds: float
    deps_extra_seconds: float = 0.0

    def build_seconds(self, warm_cache: bool, ephemeral: bool, change: str) -> float:
        if ephemeral:
            base = self.ephemeral_seconds
        else:
            base = self.warm_seconds if warm_cache else self.spill_seconds
        return base + (self.deps_extra_seconds if change == "deps" else 0.0)


@dataclass(frozen=True)
class Arrival:
    """One CI job asking for a build. `jitter` multiplies its duration on every path, so all
    policies see the same slow and fast builds."""

    index: int
    time: float
    key: str
    change: str = "code"  # code (a code-only change) | deps (touches the dependency layers)
    jitter: float = 1.0


@dataclass(frozen=True)
class Workload:
    arrivals: tuple[Arrival, ...]
    profiles: dict[str, KeyProfile]
    description: str
    # The workload key each key id stands for, when known: routing then hashes exactly what
    # `warmbuild build` hashes (history keeps only key hashes, so by default the id is hashed).
    route_keys: dict[str, str] = field(default_factory=dict)
    builder_names: tuple[str, ...] = ()  # the pool's builder names, when taken from history
    start_epoch: float = 0.0  # wall-clock time of t=0 (history), for time-of-day charts
    acquire_seconds: float | None = None  # measured placement latency (history), if any
    period_seconds: float = 0.0  # the period the arrivals cover (builder-hours count at least this)

    @property
    def horizon(self) -> float:
        return max(self.period_seconds, self.arrivals[-1].time if self.arrivals else 0.0)


@dataclass(frozen=True)
class ScaleEvent:
    """At `time`: `join` adds builders (cold caches), `drain` stops routing to the newest ones and
    removes each when its slots are empty, `crash` removes them at once: their builds learn it at
    the next lease renewal (fencing, exit 8) and are retried."""

    time: float
    action: str  # join | drain | crash
    count: int


@dataclass(frozen=True)
class FleetConfig:
    builders: int = 10
    slots: int = 2
    cache_keys: int = 50  # workloads one builder's cache holds (LRU); its NVMe size in workloads
    acquire_seconds: float | None = (
        None  # placement: list pods and leases, CAS a Lease; None: measured (history) or 0.05
    )
    lease_seconds: float = 15.0  # renewed every lease/3: a crashed builder's holders notice within that
    slot_slowdown: float = 0.0  # each other build already running on the builder slows this one by this share
    scale_events: tuple[ScaleEvent, ...] = ()
    builder_names: tuple[str, ...] = ()  # default builders-0 … builders-(N-1), as the StatefulSet names them
    retry_aborted: bool = True  # a build aborted by a crashed builder is run again, as a CI retry would

    def names(self) -> tuple[str, ...]:
        if self.builder_names:
            return tuple(self.builder_names[: self.builders]) + tuple(
                f"builders-{i}" for i in range(len(self.builder_names), self.builders)
            )
        return tuple(f"builders-{i}" for i in range(self.builders))


@dataclass(frozen=True)
class WarmbuildOptions:
    max_wait_seconds: float = 60.0
    fallback: str = "auto"
    load_factor: float = 1.25
    recheck_seconds: float = 5.0  # a waiting build re-decides this often (and whenever a slot frees)


@dataclass(frozen=True)
class DedicatedOptions:
    idle_timeout_seconds: float = 900.0  # scale to zero after this long without a build
    startup_seconds: float | None = None  # default: the workload's ephemeral startup
    keep_cache: bool = True  # the daemon's volume survives scale-to-zero


@dataclass(frozen=True)
class SimulationConfig:
    fleet: FleetConfig = FleetConfig()
    warmbuild: WarmbuildOptions = WarmbuildOptions()
    dedicated: DedicatedOptions = DedicatedOptions()
    seed: int = 1


@dataclass(frozen=True)
class BuildOutcome:
    """One build attempt, ended exactly once."""

    build: int  # attempt id, unique within a run
    arrival: int  # Arrival.index; a retried attempt shares it
    key: str
    path: str  # warm (affine builder) | spill (another warm builder) | ephemeral | dedicated | none
    builder: str | None
    warm_cache: bool  # ran on a builder whose cache held its workload: the affine-hit
    arrived: float
    started: float  # build start (after queue and startup); = ended for a build that never ran
    ended: float
    queue_seconds: float
    startup_seconds: float
    build_seconds: float
    status: str  # success | failed (no slot) | aborted (its builder crashed)

    @property
    def total_seconds(self) -> float:
        return self.ended - self.arrived


@dataclass(frozen=True)
class BuilderUsage:
    name: str
    slots: int
    joined: float
    left: float  # the horizon for a builder still there at the end
    busy_slot_seconds: float
    builds: int

    @property
    def up_seconds(self) -> float:
        return max(0.0, self.left - self.joined)


@dataclass(frozen=True)
class PolicyRun:
    policy: str
    outcomes: tuple[BuildOutcome, ...]
    builders: tuple[BuilderUsage, ...]
    ephemeral_seconds: float  # ephemeral pods' lifetime: startup + build
    horizon: float
    events: int  # events processed, for benchmarks


@dataclass(frozen=True)
class PolicyMetrics:
    policy: str
    builds: int
    succeeded: int
    failed: int
    aborted: int
    affine_hit_rate: float
    queue_p50: float
    queue_p95: float
    total_p50: float
    total_p95: float
    build_p50: float
    utilisation: float
    builder_hours: float  # warm builders (or dedicated daemons) up
    ephemeral_hours: float
    path_shares: dict[str, float]

    @property
    def all_builder_hours(self) -> float:
        return self.builder_hours + self.ephemeral_hours
