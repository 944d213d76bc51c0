"""The reference scenarios, side by side: cold, code change, dependency change under four strategies.

    bench/run --quick            # one repetition, the smaller requirement set (≤ 15 min on 2 cores)
    bench/run                    # the full requirement set, --repeat 3
    bench/run --dry-run          # print every command line in order, run nothing

Strategies, interleaved round-robin within every repetition (the starting one rotates per repetition):

  standard   what CI pipelines with docker/build-push-action do: a FRESH buildkitd with empty state
             (testbed/run-buildkitd on its own 127.0.0.N, a temporary state dir; stopped by PID and
             its state deleted afterwards) that imports and exports a registry cache
             (--import-cache/--export-cache type=registry,ref=…,mode=max). Its time includes
             starting the daemon (until `buildctl debug workers` answers).
  warm       `warmbuild build --pool --cache-key KEY` with the CI kubeconfig, the same key every time,
             so it lands on its affine builder (checked in the result file).
  ephemeral  the same command with `--fallback ephemeral` while every free slot of the affine builder
             is held (as tests/integration/test_ephemeral.py does): an ephemeral builder pod that
             imports and exports the registry cache.
  raw        `buildctl build` on the same warm buildkitd as `warm`, with the options warmbuild passes
             (rawjson progress, metadata file, registry cache export): the floor of warmbuild's overhead.
  warm-uv    `warm` with `--uv` (pip install rewritten to uv with a cache mount): cold and dependency
             change only, for pip vs uv.
  warm-uv-zstd  `warm-uv` with `--compression zstd` (the image and the registry cache): cold and
             dependency change only; what layer compression costs once the install is incremental.

Every timed build pushes a fresh tag to the local registry; the time is the wall time of the
command a CI job runs, from launch to exit. For code and dependency changes each strategy first
gets its cache into the "before" state with an untimed priming build; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_report  # noqa: E402  (bench/ is not a package)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "bench" / "reference"
RUN_BUILDKITD = ROOT / "testbed" / "run-buildkitd"
BUILDKITD_PORT = 1234
BENCH_KEY = "warmbuild-bench/reference"  # the stable workload key of every warm build
BENCH_IPS = [f"127.0.0.{n}" for n in range(60, 100)]  # fresh and priming daemons; pool pods use .10 upward
BUMP = ("pandas==2.2.2", "pandas==2.2.3")  # the dependency change: one pin bumped
CODE_FILE = Path("app") / "model.py"  # the code change: this file edited

SCENARIOS = ("cold", "code", "deps")
STRATEGIES = ("standard", "warm", "ephemeral", "raw", "warm-uv", "warm-uv-zstd")
UV_STRATEGIES = ("warm-uv", "warm-uv-zstd")
UV_SCENARIOS = ("cold", "deps")
BUILD_TIMEOUT = 3600
STRIPPED_ENV = ("WARMBUILD_", "GITHUB_", "GITLAB_", "CI_")
KEPT_ENV = ("WARMBUILD_BUILDCTL", "WARMBUILD_CACHE", "WARMBUILD_TESTBED_DIR")


class BenchError(Exception):
    pass


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    mode: str  # quick | full
    repeat: int
    scenarios: tuple[str, ...]
    registry: str
    buildctl: str
    warmbuild: str
    ci_kubeconfig: str
    namespace: str
    pool: str
    workdir: Path
    run_id: str
    dry_run: bool
    keep_workdir: bool

    def repo(self, strategy: str) -> str:
        return f"{self.registry}/bench/reference-{strategy}"

    def tag(self, strategy: str, scenario: str, rep: int, suffix: str = "") -> str:
        return f"{self.repo(strategy)}:{self.mode}-{scenario}-{self.run_id}-r{rep}{suffix}"

    def cache_ref(self, strategy: str, scenario: str, rep: int) -> str:
        """Cold: a fresh ref per build. Code/deps: one ref per scenario, primed before each timed build."""
        fresh = f"-r{rep}" if scenario == "cold" else ""
        return f"{self.repo(strategy)}:cache-{self.mode}-{scenario}-{self.run_id}{fresh}"


def settings_from(args: argparse.Namespace) -> Settings:
    env = os.environ
    missing = [n for n in ("WARMBUILD_REGISTRY", "WARMBUILD_CI_KUBECONFIG") if not env.get(n)]
    if missing and not args.dry_run:
        raise BenchError(f'{", ".join(missing)} not set: run `eval "$(testbed/up)"` first (bench/run does it for you)')
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        raise BenchError(f"unknown scenario(s) {', '.join(sorted(unknown))}: choose from {', '.join(SCENARIOS)}")
    venv_warmbuild = Path(sys.executable).with_name("warmbuild")
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:4]
    # short: buildkitd's unix socket lives under it, and socket paths are limited to ~104 bytes
    workdir = Path(tempfile.mkdtemp(prefix="wb-bench-", dir="/var/tmp"))
    scenarios = tuple(s for s in SCENARIOS if s in args.scenarios.split(","))
    return Settings(
        mode="quick" if args.quick else "full",
        repeat=args.repeat if args.repeat is not None else (1 if args.quick else 3),
        scenarios=scenarios,
        registry=env.get("WARMBUILD_REGISTRY", "127.0.0.1:5000"),
        buildctl=env.get("WARMBUILD_BUILDCTL") or shutil.which("buildctl") or "buildctl",
        warmbuild=str(venv_warmbuild) if venv_warmbuild.exists() else (shutil.which("warmbuild") or "warmbuild"),
        ci_kubeconfig=env.get("WARMBUILD_CI_KUBECONFIG", "$WARMBUILD_CI_KUBECONFIG"),
        namespace=env.get("WARMBUILD_NAMESPACE", "warmbuild"),
        pool=env.get("WARMBUILD_POOL", "default"),
        workdir=workdir,
        run_id=run_id,
        dry_run=args.dry_run,
        keep_workdir=args.keep_workdir,
    )


# ----------------------------------------------------------------------------- the workload


@dataclass
class Context:
    """One strategy's private copy of bench/reference, edited in place between builds."""

    path: Path
    base_requirements: str
    base_code: str

    @classmethod
    def create(cls, where: Path, mode: str) -> Context:
        shutil.copytree(REFERENCE, where, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if mode == "quick":
            (where / "requirements.txt").write_text((REFERENCE / "requirements-quick.txt").read_text())
        (where / "requirements-quick.txt").unlink()
        requirements = (where / "requirements.txt").read_text()
        if BUMP[0] not in requirements.splitlines():
            raise BenchError(f"{BUMP[0]} is not a line of the {mode} requirements: the dependency change needs it")
        return cls(where, requirements, (where / CODE_FILE).read_text())

    def set_state(self, revision: str, bumped: bool = False, requirements_marker: str | None = None) -> None:
        """The code carries `revision` (a code edit when it changes); the requirements are the base set
        or, `bumped`, the base set with BUMP applied (plus a marker comment, see docs/benchmarks.md)."""
        (self.path / CODE_FILE).write_text(self.base_code + f'\nBUILD_REVISION = "{revision}"\n')
        requirements = self.base_requirements
        if bumped:
            requirements = "\n".join(BUMP[1] if line == BUMP[0] else line for line in requirements.splitlines()) + "\n"
            if requirements_marker:
                requirements += f"# change {requirements_marker}\n"
        (self.path / "requirements.txt").write_text(requirements)


# ----------------------------------------------------------------------------- processes


@dataclass
class Outcome:
    seconds: float
    log: Path
    startup_seconds: float = 0.0
    queue_seconds: float = 0.0
    push_seconds: float | None = None
    path: str = ""
    builder: str = ""
    digest: str = ""
    install_cached: bool | None = None
    install_seconds: float | None = None
    cached_steps: int | None = None
    total_steps: int | None = None
    reported_seconds: float | None = (
        None  # warmbuild's own total (result file): the wall time less process start-up and wrap-up
    )


class Processes:
    """Children in their own sessions; a signal to the bench is forwarded to the running one."""

    def __init__(self, dry_run: bool, log_dir: Path):
        self.dry_run = dry_run
        self.log_dir = log_dir
        self.current: subprocess.Popen | None = None
        self.counter = 0

    def log_path(self, label: str) -> Path:
        self.counter += 1
        return self.log_dir / f"{self.counter:03d}-{label}.log"

    def run(
        self, argv: list[str], label: str, env: dict[str, str] | None = None, timeout: float = BUILD_TIMEOUT
    ) -> tuple[float, Path]:
        log = self.log_path(label)
        if self.dry_run:
            prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
            print(f"$ {prefix + ' ' if prefix else ''}{shlex.join(argv)}", flush=True)
            return 0.0, log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_ENV) or k in KEPT_ENV}
        full_env.update(env or {})
        with open(log, "w") as out:
            started = time.monotonic()
            self.current = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
            try:
                code = self.current.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop_current(signal.SIGTERM)
                raise BenchError(f"{label} took more than {timeout:.0f}s; log: {log}") from None
            # On KeyboardInterrupt (Ctrl-C, or SIGTERM/SIGHUP turned into it) `current` stays set,
            # so the clean-up forwards the signal to the child and waits for it.
            seconds = time.monotonic() - started
            self.current = None
        if code != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
            raise BenchError(f"{label} failed (exit {code}); log: {log}\n{tail}")
        return seconds, log

    def stop_current(self, signum: int) -> None:
        process, self.current = self.current, None
        if process is None or process.poll() is not None:
            return
        print(f"bench: stopping the running build (pid {process.pid})", file=sys.stderr, flush=True)
        process.send_signal(signum)  # warmbuild cancels the solve, frees its slot, deletes its pod (≤ 5 s)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tcp_accepts(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=0.3).close()
        return True
    except OSError:
        return False


@dataclass
class Daemon:
    name: str
    ip: str
    state: Path
    process: subprocess.Popen | None
    started: float
    ready: float

    @property
    def address(self) -> str:
        return f"tcp://{self.ip}:{BUILDKITD_PORT}"


class Daemons:
    """Bench-owned buildkitd processes: started with testbed/run-buildkitd, stopped by PID, state deleted."""

    def __init__(self, settings: Settings, processes: Processes):
        self.settings = settings
        self.processes = processes
        self.running: dict[int, Daemon] = {}
        self.taken: set[str] = set()
        self.counter = 0

    def _free_ip(self) -> str:
        for ip in BENCH_IPS:
            if ip not in self.taken and not tcp_accepts(ip, BUILDKITD_PORT):
                return ip
        raise BenchError(f"no free address among {BENCH_IPS[0]}–{BENCH_IPS[-1]}")

    def start(self, name: str) -> Daemon:
        self.counter += 1
        if self.settings.dry_run:
            ip = BENCH_IPS[0] if name == "priming" else BENCH_IPS[1]
            state = self.settings.workdir / f"bk{self.counter:03d}"
            print(
                f"$ {RUN_BUILDKITD.relative_to(ROOT)} {ip} {state}   # new session; wait until `buildctl --addr tcp://{ip}:1234 debug workers` answers"
            )
            return Daemon(name, ip, state, None, 0.0, 0.0)
        ip = self._free_ip()
        self.taken.add(ip)
        state = self.settings.workdir / f"bk{self.counter:03d}"
        log = open(self.processes.log_path(f"buildkitd-{name}"), "w")
        started = time.monotonic()
        process = subprocess.Popen(
            [str(RUN_BUILDKITD), ip, str(state)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        daemon = Daemon(name, ip, state, process, started, 0.0)
        self.running[process.pid] = daemon
        deadline = started + 120
        while not tcp_accepts(ip, BUILDKITD_PORT):
            if process.poll() is not None:
                raise BenchError(
                    f"buildkitd {name} on {ip} exited at start (code {process.returncode}); see {log.name} in {self.processes.log_dir}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"buildkitd {name} on {ip} did not listen within 120 s")
            time.sleep(0.05)
        while True:
            check = subprocess.run(
                [self.settings.buildctl, "--addr", daemon.address, "debug", "workers"], capture_output=True, timeout=30
            )
            if check.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"buildkitd {name} on {ip} did not answer within 120 s: {check.stderr.decode()[-300:]}"
                )
            time.sleep(0.05)
        daemon.ready = time.monotonic()
        return daemon

    def stop(self, daemon: Daemon) -> None:
        if self.settings.dry_run:
            print(
                f"# stop buildkitd {daemon.name} by PID (TERM, KILL after 10 s), unmount leftovers, rm -rf {daemon.state}"
            )
            return
        process = daemon.process
        try:
            # Interrupted mid-build: end the client first, so the daemon cancels the solve and stops
            # at once instead of waiting for the build in a graceful stop.
            self.processes.stop_current(signal.SIGTERM)
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            if process is not None:
                self.running.pop(process.pid, None)
            self.taken.discard(daemon.ip)
            remove_state(daemon.state)

    def stop_all(self) -> None:
        for daemon in list(self.running.values()):
            self.stop(daemon)


def leftover_mounts(state: Path) -> list[str]:
    """Mount points a killed buildkitd left: under its state dir, or temporary overlay mounts
    elsewhere (/tmp/containerd-mount…) whose layers are in its state dir."""
    prefix = str(state.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        mountpoint = fields[4].replace("\\040", " ")
        if mountpoint.startswith(prefix) or prefix in line:
            found.append(mountpoint)
    return sorted(found, key=len, reverse=True)


def remove_state(path: Path) -> None:
    """Delete a stopped buildkitd's state dir; unmount whatever it left mounted first."""
    for mountpoint in leftover_mounts(path):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True)
        if not mountpoint.startswith(str(path.resolve())):
            try:
                os.rmdir(mountpoint)  # the empty temporary mount point buildkitd made for it
            except OSError:
                pass
    for _attempt in range(3):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(1)
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- the pool's slots


class Pool:
    """The affine builder of BENCH_KEY and its slots, through the CI identity's Lease rights."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = None
        self.affine = None  # warmbuild.pool.membership.Builder
        self.keepers: list = []  # (keeper, grant) pairs currently held

    def connect(self) -> None:
        from warmbuild.errors import WarmbuildError
        from warmbuild.kube.client import connect
        from warmbuild.pool.affinity import preference_order
        from warmbuild.pool.membership import discover_builders

        try:
            client = connect(self.settings.ci_kubeconfig)
            builders = {b.name: b for b in discover_builders(client, self.settings.namespace, self.settings.pool)}
        except WarmbuildError as exc:
            if self.settings.dry_run:
                return  # the command lines name the affine builder by a placeholder
            raise BenchError(f"cannot read pool '{self.settings.pool}': {exc.message}") from None
        if not builders:
            if self.settings.dry_run:
                return
            raise BenchError(f"pool '{self.settings.pool}' has no ready builders (warmbuild pool status)")
        self.affine = builders[preference_order(BENCH_KEY, builders)[0]]
        if not self.settings.dry_run:
            self.client = client  # a dry run only reads which builder is affine

    @property
    def affine_name(self) -> str:
        return self.affine.name if self.affine else "<affine builder of the bench key>"

    @property
    def affine_address(self) -> str:
        return self.affine.address if self.affine else "tcp://<affine builder>:1234"

    def _free_slots(self) -> int:
        from warmbuild.kube.names import slot_lease_name
        from warmbuild.pool.leases import list_pool_leases

        leases = list_pool_leases(self.client, self.settings.namespace, self.settings.pool)
        now = self.client.server_now()
        return sum(
            1
            for i in range(self.affine.slots)
            if (lease := leases.get(slot_lease_name(self.affine.name, i))) is None or lease.is_free(now)
        )

    def wait_until_free(self, timeout: float = 900) -> None:
        """Untimed: a warm build should find its affine slot free (other jobs may share the testbed)."""
        if self.settings.dry_run:
            return
        deadline = time.monotonic() + timeout
        announced = False
        while self._free_slots() == 0:
            if not announced:
                print(
                    f"bench: {self.affine.name} is busy with other jobs; waiting for a free slot",
                    file=sys.stderr,
                    flush=True,
                )
                announced = True
            if time.monotonic() > deadline:
                raise BenchError(f"no slot of {self.affine.name} became free within {timeout:.0f}s")
            time.sleep(1)

    def _acquire(self, what: str):
        from warmbuild.pool.leases import HolderInfo, LeaseKeeper, list_pool_leases, try_acquire_slot

        holder = HolderInfo(identity=f"bench-{what}-{uuid.uuid4().hex[:6]}", workload_key=f"bench-{what}")
        grant = try_acquire_slot(
            self.client,
            self.settings.namespace,
            self.settings.pool,
            self.affine,
            holder,
            list_pool_leases(self.client, self.settings.namespace, self.settings.pool),
            duration=30,
        )
        if grant is None:
            return None
        keeper = LeaseKeeper(
            self.client, grant, on_lost=lambda reason: print(f"bench: lost {reason}", file=sys.stderr)
        ).start()
        self.keepers.append((keeper, grant))
        return grant

    @contextmanager
    def holding(self, what: str, all_slots: bool, timeout: float = 900) -> Iterator[None]:
        """Hold one slot of the affine builder (raw buildctl builds there as a pool job would) or every
        free one (so the next warmbuild build finds it busy and goes ephemeral). Renewed; released after."""
        if self.settings.dry_run:
            print(
                f"# hold {'every free slot' if all_slots else 'one slot'} of {self.affine_name} (Lease, renewed every 10 s)"
            )
            try:
                yield
            finally:
                print(f"# release the held slot(s) of {self.affine_name}")
            return
        start = len(self.keepers)
        try:
            deadline = time.monotonic() + timeout
            while True:
                grant = self._acquire(what)
                if all_slots and grant is not None:
                    continue
                if all_slots and self._free_slots() == 0:
                    break
                if not all_slots and grant is not None:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"could not hold a slot of {self.affine.name} within {timeout:.0f}s")
                time.sleep(1)
            yield
        finally:
            self.release(start)

    def release(self, start: int = 0) -> None:
        from warmbuild.pool.leases import release_slot

        while len(self.keepers) > start:
            keeper, grant = self.keepers.pop()
            keeper.stop()
            try:
                release_slot(self.client, self.settings.namespace, grant.name, grant.holder)
            except Exception as exc:  # noqa: BLE001 - keep releasing the others
                print(f"bench: could not release {grant.name}: {exc}", file=sys.stderr)

    def existing_pods(self, names: set[str]) -> list[str]:
        from warmbuild.kube.names import EPHEMERAL_LABEL, pods_path

        body = self.client.request(
            "GET", pods_path(self.settings.namespace), query={"labelSelector": f"{EPHEMERAL_LABEL}=true"}
        ).body
        return [p["metadata"]["name"] for p in body["items"] if p["metadata"]["name"] in names]


# ----------------------------------------------------------------------------- parsing


def install_step(steps: list[dict]) -> dict | None:
    """The RUN that installs requirements.txt (pip, or uv after `--uv`)."""
    for step in steps:
        name = step.get("name") or ""
        if "RUN" in name and "pip install" in name and "requirements.txt" in name:
            return step
    return None


def parse_rawjson(log: Path) -> dict:
    """Steps and cache counts from a buildctl --progress=rawjson log, with warmbuild's own parser."""
    from warmbuild.buildkit.progress import ProgressTracker

    tracker = ProgressTracker()
    for line in log.read_text(errors="replace").splitlines():
        tracker.feed_line(line)
    steps = [{"name": s.name, "cached": s.cached, "seconds": s.duration_seconds} for s in tracker.steps()]
    stats = tracker.cache_stats()
    return {"steps": steps, "cached_steps": stats.cached_steps, "total_steps": stats.total_steps}


def digest_from(metadata: Path) -> str:
    try:
        return json.loads(metadata.read_text()).get("containerimage.digest", "")
    except (OSError, ValueError):
        return ""


# ----------------------------------------------------------------------------- strategies


class Bench:
    def __init__(self, settings: Settings):
        self.s = settings
        self.logs = settings.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes = Processes(settings.dry_run, self.logs)
        self.daemons = Daemons(settings, self.processes)
        self.pool = Pool(settings)
        self.contexts: dict[str, Context] = {}
        self.priming: Daemon | None = None
        self.rows: list[dict] = []
        self.ephemeral_names: set[str] = set()  # pods our builds ran on, checked gone at the end

    # -- command lines

    def buildctl_argv(
        self,
        address: str,
        ctx: Context,
        tag: str,
        metadata: Path,
        no_cache: bool,
        imports: tuple[str, ...],
        exports: tuple[str, ...],
    ) -> list[str]:
        argv = [
            self.s.buildctl,
            "--addr",
            address,
            "build",
            "--progress=rawjson",
            "--frontend=dockerfile.v0",
            "--local",
            f"context={ctx.path}",
            "--local",
            f"dockerfile={ctx.path}",
            "--opt",
            "filename=Dockerfile",
            "--metadata-file",
            str(metadata),
            "--opt",
            f"build-arg:REGISTRY={self.s.registry}",
        ]
        if no_cache:
            argv.append("--no-cache")
        for ref in imports:
            argv += ["--import-cache", ref]
        for ref in exports:
            argv += ["--export-cache", ref]
        return argv + ["--output", f'type=image,"name={tag}",push=true']

    def warmbuild_argv(
        self,
        ctx: Context,
        tag: str,
        cache_ref: str,
        result: Path,
        no_cache: bool,
        uv: bool = False,
        ephemeral: bool = False,
        zstd: bool = False,
    ) -> list[str]:
        argv = [
            self.s.warmbuild,
            "build",
            str(ctx.path),
            "--pool",
            self.s.pool,
            "--namespace",
            self.s.namespace,
            "--cache-key",
            BENCH_KEY,
            "--build-arg",
            f"REGISTRY={self.s.registry}",
            "--tag",
            tag,
            "--push",
            "--cache-ref",
            cache_ref,
            "--result-file",
            str(result),
            "--state-file",
            str(result.with_suffix(".state.json")),
        ]
        if no_cache:
            argv.append("--no-cache")
        if uv:
            argv.append("--uv")
        if zstd:
            argv += ["--compression", "zstd"]
        if ephemeral:
            argv += ["--fallback", "ephemeral"]
        return argv

    def warmbuild_env(self) -> dict[str, str]:
        # The CI identity. Every child runs without the caller's other WARMBUILD_*/GITHUB_*/GITLAB_*
        # variables (STRIPPED_ENV), so nothing picks another builder, fallback, cache ref or result file.
        return {"KUBECONFIG": self.s.ci_kubeconfig}

    # -- one build per strategy

    def run_standard(self, ctx: Context, label: str, tag: str, cache_ref: str, no_cache: bool) -> Outcome:
        """A fresh buildkitd, registry cache in and out, push; timed from starting the daemon."""
        metadata = self.s.workdir / f"{label}.metadata.json"
        daemon = self.daemons.start(f"standard-{label}")
        try:
            argv = self.buildctl_argv(
                daemon.address,
                ctx,
                tag,
                metadata,
                no_cache,
                (f"type=registry,ref={cache_ref}",),
                (f"type=registry,ref={cache_ref},mode=max",),
            )
            build_seconds, log = self.processes.run(argv, label)
        finally:
            self.daemons.stop(daemon)
        startup = daemon.ready - daemon.started
        return self._from_rawjson(
            Outcome(
                startup + build_seconds,
                log,
                startup_seconds=startup,
                path="fresh-buildkitd",
                builder=daemon.address,
                digest=digest_from(metadata),
            )
        )

    def run_raw(self, ctx: Context, label: str, tag: str, cache_ref: str, no_cache: bool) -> Outcome:
        """buildctl on the affine warm builder with warmbuild's options; a slot is held, untimed."""
        metadata = self.s.workdir / f"{label}.metadata.json"
        argv = self.buildctl_argv(
            self.pool.affine_address,
            ctx,
            tag,
            metadata,
            no_cache,
            (),
            (f"type=registry,ref={cache_ref},mode=max,ignore-error=true",),
        )
        with self.pool.holding("raw", all_slots=False):
            seconds, log = self.processes.run(argv, label)
        return self._from_rawjson(
            Outcome(seconds, log, path="raw", builder=self.pool.affine_address, digest=digest_from(metadata))
        )

    def run_warmbuild(
        self,
        ctx: Context,
        label: str,
        tag: str,
        cache_ref: str,
        no_cache: bool,
        uv: bool = False,
        ephemeral: bool = False,
        zstd: bool = False,
    ) -> Outcome:
        result_file = self.s.workdir / f"{label}.result.json"
        argv = self.warmbuild_argv(ctx, tag, cache_ref, result_file, no_cache, uv=uv, ephemeral=ephemeral, zstd=zstd)
        expected = "ephemeral" if ephemeral else "warm"
        for _attempt in range(3):
            if ephemeral:
                with self.pool.holding("ephemeral", all_slots=True):
                    seconds, log = self.processes.run(argv, label, env=self.warmbuild_env())
            else:
                self.pool.wait_until_free()
                seconds, log = self.processes.run(argv, label, env=self.warmbuild_env())
            if self.s.dry_run:
                return Outcome(0.0, log, path=expected)
            result = json.loads(result_file.read_text())
            placement = result["placement"]
            if placement["path"] == "ephemeral" and placement.get("builder_name"):
                self.ephemeral_names.add(placement["builder_name"])
            on_affine = ephemeral or placement.get("builder_name") == self.pool.affine.name
            if placement["path"] == expected and on_affine:
                break
            print(
                f"bench: {label} went {placement['path']} to {placement.get('builder_name')} "
                f"({placement.get('reason')}), not {expected}: another job took the slot; measuring again",
                file=sys.stderr,
                flush=True,
            )
        else:
            raise BenchError(f"{label}: three attempts, never a {expected} build on {self.pool.affine_name}")
        timings = result["timings"]
        step = install_step(result["steps"])
        return Outcome(
            seconds,
            log,
            startup_seconds=timings.get("startup_seconds") or 0.0,
            queue_seconds=timings.get("queue_seconds") or 0.0,
            push_seconds=timings.get("push_seconds"),
            path=placement["path"],
            builder=placement.get("builder_name") or placement.get("builder") or "",
            digest=result["image"].get("digest") or "",
            install_cached=step["cached"] if step else None,
            install_seconds=step["seconds"] if step else None,
            cached_steps=result["cache"]["cached_steps"],
            total_steps=result["cache"]["total_steps"],
            reported_seconds=timings.get("total_seconds"),
        )

    def _from_rawjson(self, outcome: Outcome) -> Outcome:
        if self.s.dry_run:
            return outcome
        parsed = parse_rawjson(outcome.log)
        step = install_step(parsed["steps"])
        outcome.install_cached = step["cached"] if step else None
        outcome.install_seconds = step["seconds"] if step else None
        outcome.cached_steps, outcome.total_steps = parsed["cached_steps"], parsed["total_steps"]
        return outcome

    def build(self, strategy: str, ctx: Context, label: str, tag: str, cache_ref: str, no_cache: bool) -> Outcome:
        if strategy == "standard":
            return self.run_standard(ctx, label, tag, cache_ref, no_cache)
        if strategy == "raw":
            return self.run_raw(ctx, label, tag, cache_ref, no_cache)
        return self.run_warmbuild(
            ctx,
            label,
            tag,
            cache_ref,
            no_cache,
            uv=strategy in UV_STRATEGIES,
            ephemeral=strategy == "ephemeral",
            zstd=strategy == "warm-uv-zstd",
        )

    def prime(self, strategy: str, ctx: Context, label: str, tag: str, cache_ref: str) -> None:
        """Untimed: the strategy's cache in the "before" state. Registry-cache strategies (standard,
        ephemeral) get their cache ref exported by a long-lived priming buildkitd — what their previous
        CI run would have left there; warm strategies build on their builder as the previous run did."""
        if strategy in ("standard", "ephemeral"):
            if self.priming is None:
                self.priming = self.daemons.start("priming")
            metadata = self.s.workdir / f"{label}.metadata.json"
            export = f"type=registry,ref={cache_ref},mode=max" + (
                ",ignore-error=true" if strategy == "ephemeral" else ""
            )
            argv = self.buildctl_argv(
                self.priming.address, ctx, tag, metadata, False, (f"type=registry,ref={cache_ref}",), (export,)
            )
            self.processes.run(argv, label)
        else:
            self.build(strategy, ctx, label, tag, cache_ref, no_cache=False)

    # -- the scenarios

    def measure(self, scenario: str, strategy: str, rep: int) -> None:
        ctx = self.contexts[strategy]
        number = rep + 1
        unique = f"{self.s.run_id}-{strategy}-r{number}"
        tag = self.s.tag(strategy, scenario, number)
        cache_ref = self.s.cache_ref(strategy, scenario, number)
        label = f"{scenario}-{strategy}-r{number}"
        expected_install_cached = {"cold": False, "code": True, "deps": False}[scenario]
        if self.s.dry_run:
            print(f"\n## {scenario} / {strategy} / repetition {rep + 1}")
        if scenario == "cold":
            ctx.set_state(f"cold-{unique}")
        else:
            ctx.set_state(f"{scenario}-before-{unique}")
            if self.s.dry_run:
                print(f"# priming (untimed): {CODE_FILE} revision '{scenario}-before-…', base requirements")
            self.prime(strategy, ctx, f"{label}-prime", self.s.tag(strategy, scenario, number, "-prime"), cache_ref)
            if scenario == "code":
                ctx.set_state(f"code-after-{unique}")
                what = f"timed: {CODE_FILE} edited (revision 'code-after-…')"
            else:
                ctx.set_state(f"deps-before-{unique}", bumped=True, requirements_marker=unique)
                what = f"timed: requirements.txt {BUMP[0]} → {BUMP[1]}"
            if self.s.dry_run:
                print(f"# {what}")
        started_at = datetime.now(timezone.utc)
        outcome = self.build(strategy, ctx, label, tag, cache_ref, no_cache=scenario == "cold")
        note = ""
        if outcome.install_cached is not None and outcome.install_cached != expected_install_cached:
            note = f"install step {'cached' if outcome.install_cached else 'not cached'}, expected the opposite"
            print(f"bench: warning: {label}: {note}", file=sys.stderr, flush=True)
        self.rows.append(
            {
                "run_id": self.s.run_id,
                "mode": self.s.mode,
                "scenario": scenario,
                "strategy": strategy,
                "rep": number,
                "seconds": round(outcome.seconds, 3),
                "startup_seconds": round(outcome.startup_seconds, 3),
                "queue_seconds": round(outcome.queue_seconds, 3),
                "push_seconds": "" if outcome.push_seconds is None else outcome.push_seconds,
                "install_cached": "" if outcome.install_cached is None else outcome.install_cached,
                "install_seconds": "" if outcome.install_seconds is None else round(outcome.install_seconds, 3),
                "cached_steps": "" if outcome.cached_steps is None else outcome.cached_steps,
                "total_steps": "" if outcome.total_steps is None else outcome.total_steps,
                "reported_seconds": "" if outcome.reported_seconds is None else outcome.reported_seconds,
                "path": outcome.path,
                "builder": outcome.builder,
                "tag": tag,
                "digest": outcome.digest,
                "started_at": started_at.isoformat(timespec="seconds"),
                "note": note,
            }
        )
        if not self.s.dry_run:
            # Every row so far, kept with the logs if the run fails later.
            reference_report.write_rows(self.rows, self.s.workdir / "rows-so-far.csv")
            print(
                f"bench: {label}: {outcome.seconds:.1f}s ({outcome.path} {outcome.builder}"
                f"{f', startup {outcome.startup_seconds:.1f}s' if outcome.startup_seconds else ''}"
                f"{f', install step {outcome.install_seconds:.1f}s' if outcome.install_seconds else ''}"
                f"{', install cached' if outcome.install_cached else ''})",
                file=sys.stderr,
                flush=True,
            )

    def plan(self) -> list[tuple[str, str, int]]:
        """Round-robin within each repetition; the first strategy rotates from one repetition to the next."""
        order = []
        for rep in range(self.s.repeat):
            for scenario in self.s.scenarios:
                strategies = [s for s in STRATEGIES if s not in UV_STRATEGIES or scenario in UV_SCENARIOS]
                shift = rep % len(strategies)
                for strategy in strategies[shift:] + strategies[:shift]:
                    order.append((scenario, strategy, rep))
        return order

    def run(self) -> list[dict]:
        self.pool.connect()
        for strategy in STRATEGIES:
            self.contexts[strategy] = Context.create(self.s.workdir / f"context-{strategy}", self.s.mode)
        plan = self.plan()
        for index, (scenario, strategy, rep) in enumerate(plan, 1):
            if not self.s.dry_run:
                print(
                    f"bench: [{index}/{len(plan)}] {scenario} / {strategy} / repetition {rep + 1}",
                    file=sys.stderr,
                    flush=True,
                )
            self.measure(scenario, strategy, rep)
        return self.rows

    def cleanup(self) -> None:
        """Every path out, Ctrl-C included: the running build stopped, slots released, our daemons
        stopped by PID and their state deleted, our ephemeral pods gone."""
        steps = [
            ("stop the running build", lambda: self.processes.stop_current(signal.SIGTERM)),
            ("release leftovers with `warmbuild release`", self.release_leftovers),
            ("release held slots", self.pool.release if self.pool.client is not None else lambda: None),
            ("stop bench buildkitds", self.daemons.stop_all),
            ("check ephemeral pods", self.check_pods),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - one failed step must not skip the others
                print(f"bench: warning: could not {what}: {exc}", file=sys.stderr)

    def release_leftovers(self) -> None:
        """A warmbuild child that could not clean up left its state file: the CI post step's way out."""
        for state in sorted(self.s.workdir.glob("*.state.json")):
            try:
                pod = json.loads(state.read_text()).get("ephemeral_pod")
            except (OSError, ValueError):
                pod = None
            if pod:
                self.ephemeral_names.add(pod)
            subprocess.run(
                [self.s.warmbuild, "release", "--state-file", str(state), "--namespace", self.s.namespace],
                env={**os.environ, **self.warmbuild_env()},
                stdin=subprocess.DEVNULL,
                timeout=60,
            )

    def check_pods(self) -> None:
        if self.pool.client is None or not self.ephemeral_names:
            return
        deadline = time.monotonic() + 30
        while (pods := self.pool.existing_pods(self.ephemeral_names)) and time.monotonic() < deadline:
            time.sleep(1)
        if pods:
            print(f"bench: warning: ephemeral pods still present: {', '.join(pods)}", file=sys.stderr)


# ----------------------------------------------------------------------------- main


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" dirty" if git("status", "--porcelain") else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="one repetition with the smaller requirement set (≤ 15 min)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of cold,code,deps (development: results go to reference-MODE-partial.*, docs untouched)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print every command line in order; run nothing")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep contexts and build logs in /var/tmp afterwards"
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="write the CSV and chart but leave docs/benchmarks.md alone"
    )
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        settings = settings_from(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    partial = settings.scenarios != SCENARIOS
    # The command to reproduce: what was run, less the flags that change nothing measured.
    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join(["bench/run", *(a for a in given if a not in ("--keep-workdir", "--no-docs"))])
    bench = Bench(settings)
    commit = git_commit()  # what is measured: taken before the run, so later edits cannot relabel it
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    load = os.getloadavg()[0]

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job may inherit it ignored
        signal.signal(signum, on_term)
    ok = False
    try:
        rows = bench.run()
        ok = True
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        try:
            bench.cleanup()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if ok and not settings.keep_workdir:
                shutil.rmtree(settings.workdir, ignore_errors=True)
            elif not settings.dry_run:
                print(f"bench: build logs and the rows measured so far kept in {settings.workdir}", file=sys.stderr)
            else:
                shutil.rmtree(settings.workdir, ignore_errors=True)
    if settings.dry_run:
        print(
            f"\n# {len(rows)} timed builds; results would go to bench/results/reference-{settings.mode}.csv, "
            f"bench/results/reference-{settings.mode}.png and docs/benchmarks.md"
        )
        return 0
    meta = reference_report.RunInfo(
        run_id=settings.run_id,
        mode=settings.mode,
        repeat=settings.repeat,
        command=command,
        commit=commit,
        started_at=started_at.isoformat(timespec="seconds"),
        wall_seconds=time.monotonic() - started,
        load_at_start=load,
        cpus=os.cpu_count() or 0,
        affine_builder=f"{bench.pool.affine_name} ({bench.pool.affine_address})",
        requirements=(REFERENCE / ("requirements-quick.txt" if settings.mode == "quick" else "requirements.txt")).name,
        bump=f"{BUMP[0]} → {BUMP[1]}",
        partial=partial,
    )
    return reference_report.publish(rows, meta, write_docs=not args.no_docs and not partial)


if __name__ == "__main__":
    sys.exit(main())
