"""The soak: many builds through the testbed's pool with faults injected at random times, then checks.

    bench/soak --quick            40 builds, every fault kind at least once
    bench/soak [--builds 200]     the full soak (each fault kind about three times)
    bench/soak --seed 7           the same plan again (fault kinds, their build positions, workloads)

Builds are real `warmbuild build` processes (a CI step each) from a mix of workloads — a code change
on a small app, a few short RUN steps, a 20 s RUN step, a two-stage build — in waves of 1 to 8 at
once, through three paths: the pool with the CI identity's own Leases, the scheduler (two replicas
started here, both URLs given), and untrusted builds on ephemeral builders. Every build pushes a
tag of its own.

Faults (one at a time, each at a random build of the plan, a random 0–8 s after that build
starts; `testbed/fault` does the cluster's): SIGKILL of a builder's buildkitd (one that holds a slot
when there is one), a kube-apiserver restart, an etcd restart, the registry stopped for 10 s, a
scheduler replica SIGKILLed (a new one started in its place), a builder's disk filled (a full
tmpfs for 20 s), and SIGTERM and SIGKILL of a running client (a SIGKILLed client's CI post step,
`warmbuild release`, runs after it, as on every CI platform).

After the run, nothing may be lost: no slot Lease held, no ephemeral pod left, every tag in the
registry pointing at the digest its build reported (and no tag pushed by a build that did not
report one, unless its client was SIGKILLed), and every build either a success or a failure with a
documented exit code, one `warmbuild: error:` line and no traceback. The figures (outcomes, exit
codes, retries, p50/p95 build time with and without a fault in the build's window, faults of each
kind) go to docs/reliability.md under the mode's heading, with the commit measured; the process
exits 1 when a check fails. Runs only with the testbed up and its lock held (it restarts the
shared API server): `flock -o /tmp/wb-testbed.lock bench/soak --quick`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import requests  # noqa: E402
from scheduler_harness import CI_USER, SchedulerProcess, ci_scheduler_token, prepare  # noqa: E402

from warmbuild.kube.client import connect  # noqa: E402
from warmbuild.pool.leases import list_pool_leases  # noqa: E402

FAULT = str(ROOT / "testbed" / "fault")
DOCUMENTED_EXITS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 130, 143}  # src/warmbuild/errors.py
FAULT_KINDS = (
    "buildkitd-kill",
    "apiserver-restart",
    "etcd-restart",
    "registry-stop",
    "scheduler-kill",
    "disk-fill",
    "client-sigterm",
    "client-sigkill",
)
FAULT_SETTLE_SECONDS = 5.0  # a build that ends this soon after a fault still counts as "with a fault"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)

WORKLOADS = {
    # name: Dockerfile (BASE and STAMP filled in); every build writes its own stamp.txt (a code change)
    "code": "FROM {base}\nWORKDIR /app\nCOPY stamp.txt .\nRUN python3 -c \"print(open('stamp.txt').read())\"\n",
    "steps": "FROM {base}\nRUN echo one && sleep 2\nCOPY stamp.txt /stamp.txt\nRUN sleep 4 && cat /stamp.txt\n",
    "long": "FROM {base}\nCOPY stamp.txt /stamp.txt\nRUN sleep 20 && cat /stamp.txt\n",
    "twostage": (
        "FROM {base} AS build\nCOPY stamp.txt /src/stamp.txt\nRUN sleep 1 && cp /src/stamp.txt /out.txt\n"
        "FROM {base}\nCOPY --from=build /out.txt /out.txt\n"
    ),
}
WORKLOAD_WEIGHTS = {"code": 5, "steps": 3, "long": 1, "twostage": 2}
PATH_WEIGHTS = {"direct": 15, "scheduler": 4, "ephemeral": 1}


@dataclass
class Build:
    index: int
    workload: str
    path: str
    concurrency: int
    tag: str
    directory: Path
    started: float = 0.0
    ended: float = 0.0
    exit_code: int | None = None
    stderr: str = ""
    result: dict = field(default_factory=dict)
    signalled: str = ""  # SIGTERM / SIGKILL when the soak signalled this client
    post_step: str = ""  # the release post step's outcome, after a SIGKILL
    process: subprocess.Popen | None = None


@dataclass
class FaultEvent:
    kind: str
    target: str
    started: float
    ended: float
    ok: bool
    detail: str


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.run_id = f"{datetime.now(timezone.utc):%m%d%H%M}-{uuid.uuid4().hex[:4]}"
        self.registry = os.environ["WARMBUILD_REGISTRY"]
        self.base = os.environ["WARMBUILD_BASE_IMAGE"]
        self.namespace = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
        self.pool = os.environ.get("WARMBUILD_POOL", "default")
        self.admin = connect(os.environ["KUBECONFIG"])
        self.work = Path(tempfile.mkdtemp(prefix="warmbuild-soak-"))
        self.builds: list[Build] = []
        self.faults: list[FaultEvent] = []
        self.lock = threading.Lock()
        self.fault_lock = threading.Lock()
        self.fault_threads: list[threading.Thread] = []
        self.replicas: list[SchedulerProcess] = []
        self.setup = None
        self.scheduler_token = ""

    # ---------------------------------------------------------------------------------- the plan

    def plan(self) -> tuple[list[Build], dict[int, str]]:
        n = self.args.builds
        builds, index = [], 0
        while index < n:
            concurrency = self.rng.choice((1, 2, 4, 6, 8))
            for _ in range(min(n - index, max(2, 2 * concurrency))):
                workload = self.rng.choices(list(WORKLOAD_WEIGHTS), weights=list(WORKLOAD_WEIGHTS.values()))[0]
                path = self.rng.choices(list(PATH_WEIGHTS), weights=list(PATH_WEIGHTS.values()))[0]
                tag = f"{self.registry}/warmbuild-soak/{workload}:{self.run_id}-{index:03d}"
                builds.append(Build(index, workload, path, concurrency, tag, self.work / f"b{index:03d}"))
                index += 1
        rounds = max(1, round(n / 70))  # each kind about 3 times in 200 builds, once in 40
        kinds = [kind for kind in FAULT_KINDS for _ in range(rounds)]
        self.rng.shuffle(kinds)
        positions = sorted(self.rng.sample(range(2, max(3, n - 2)), k=min(len(kinds), max(1, n - 4))))
        return builds, dict(zip(positions, kinds))

    # ---------------------------------------------------------------------------------- builds

    def argv(self, build: Build) -> tuple[list[str], dict[str, str]]:
        directory = build.directory
        directory.mkdir(parents=True)
        (directory / "Dockerfile").write_text(WORKLOADS[build.workload].format(base=self.base))
        (directory / "stamp.txt").write_text(f"{build.tag} {uuid.uuid4().hex}\n")
        argv = [
            sys.executable,
            "-m",
            "warmbuild.entry.start",  # the `warmbuild` executable a CI step runs
            "build",
            str(directory),
            "--pool",
            self.pool,
            "--namespace",
            self.namespace,
            "--tag",
            build.tag,
            "--push",
            "--cache-key",
            f"soak-{build.workload}",
            "--max-wait",
            str(self.args.max_wait),
            "--result-file",
            str(directory / "result.json"),
            "--state-file",
            str(directory / "state.json"),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GITLAB_", "INPUT_", "RUNNER_"))}
        env.pop("WARMBUILD_BUILDER", None)
        env.pop("CI", None)
        if build.path == "scheduler":
            urls = ",".join(r.url for r in self.replicas if r.process.poll() is None)
            argv += ["--scheduler", urls, "--scheduler-ca", str(self.setup.ca)]
            env.update(KUBECONFIG="/nonexistent", WARMBUILD_SCHEDULER_TOKEN=self.scheduler_token)
        else:
            argv += ["--kubeconfig", os.environ["WARMBUILD_CI_KUBECONFIG"]]
            if build.path == "ephemeral":
                argv += ["--untrusted", "--ephemeral-timeout", "120"]
        return argv, env

    def run_build(self, build: Build) -> None:
        try:
            self._run_build(build)
        except Exception as exc:  # the soak's own failure: reported as a problem, never a hang
            build.exit_code = -1 if build.exit_code is None else build.exit_code
            build.stderr += f"\nsoak: {type(exc).__name__}: {exc}"
            build.ended = build.ended or time.monotonic()

    def _run_build(self, build: Build) -> None:
        argv, env = self.argv(build)
        build.started = time.monotonic()
        with open(build.directory / "stderr.log", "w") as err, open(build.directory / "stdout.log", "w") as out:
            build.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=build.directory
            )
            try:
                build.exit_code = build.process.wait(timeout=self.args.build_timeout)
            except subprocess.TimeoutExpired:
                os.kill(build.process.pid, signal.SIGKILL)
                build.exit_code = build.process.wait()
                build.signalled = build.signalled or "timeout"
        build.ended = time.monotonic()
        build.stderr = (build.directory / "stderr.log").read_text(errors="replace")
        result_file = build.directory / "result.json"
        if result_file.exists():
            try:
                build.result = json.loads(result_file.read_text())
            except ValueError:
                build.result = {"unreadable": True}
        if build.signalled in ("SIGKILL", "timeout"):
            self.post_step(build, argv, env)
        self.say(
            f"build {build.index:3d} {build.workload:8s} {build.path:9s} exit {build.exit_code:4d} "
            f"{build.ended - build.started:6.1f}s {build.signalled}"
        )

    def post_step(self, build: Build, argv: list[str], env: dict[str, str]) -> None:
        """The CI platform's post step after a killed job: `warmbuild release` with the same state file."""
        release = [
            sys.executable,
            "-m",
            "warmbuild.entry.start",
            "release",
            "--state-file",
            str(build.directory / "state.json"),
        ]
        if build.path == "scheduler":
            release += argv[argv.index("--scheduler") : argv.index("--scheduler") + 4]
        else:
            release += ["--kubeconfig", os.environ["WARMBUILD_CI_KUBECONFIG"]]
        done = subprocess.run(release, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
        build.post_step = f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:200]}"
        if "Traceback" in done.stderr:
            build.post_step += " (TRACEBACK)"

    # ---------------------------------------------------------------------------------- faults

    def inject(self, kind: str) -> None:
        time.sleep(self.rng.uniform(0, 8))
        with self.fault_lock:  # one fault at a time
            started = time.monotonic()
            target, ok, detail = "", True, ""
            try:
                target, detail = self.apply(kind)
            except Exception as exc:  # a fault that could not be applied is reported, not fatal
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            event = FaultEvent(
                kind,
                target,
                started,
                time.monotonic(),
                ok,
                detail.strip().splitlines()[-1:][0] if detail.strip() else "",
            )
            with self.lock:
                self.faults.append(event)
            self.say(
                f"fault {kind} {target} ({event.ended - event.started:.1f}s) {'ok' if ok else 'FAILED'}: {event.detail}"
            )

    def fault(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([FAULT, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"testbed/fault {' '.join(args)}: {done.stderr.strip()[-300:]}")
        return done.stdout

    def busy_builder(self) -> str:
        now = self.admin.server_now()
        leases = list_pool_leases(self.admin, self.namespace, self.pool).values()
        busy = sorted({lease.builder for lease in leases if not lease.is_free(now) and lease.builder})
        if busy:
            return self.rng.choice(busy)
        pods = self.admin.request(
            "GET",
            f"/api/v1/namespaces/{self.namespace}/pods",
            query={"labelSelector": f"warmbuild.dev/pool={self.pool}"},
        ).body["items"]
        return self.rng.choice(sorted(p["metadata"]["name"] for p in pods))

    def running_client(self) -> Build | None:
        with self.lock:
            running = [
                b
                for b in self.builds
                if b.process is not None
                and b.process.poll() is None
                and not b.signalled
                and time.monotonic() - b.started > 2
            ]
        return self.rng.choice(running) if running else None

    def apply(self, kind: str) -> tuple[str, str]:
        if kind == "buildkitd-kill":
            pod = self.busy_builder()
            return pod, self.fault("buildkitd-kill", pod)
        if kind == "apiserver-restart":
            return "kube-apiserver", self.fault("apiserver-restart", "5")
        if kind == "etcd-restart":
            return "etcd", self.fault("etcd-restart", "5")
        if kind == "registry-stop":
            return "registry", self.fault("registry-stop", "10")
        if kind == "disk-fill":
            pod = self.busy_builder()
            detail = self.fault("disk-fill", pod)
            time.sleep(20)
            return pod, detail + self.fault("disk-restore", pod)
        if kind == "scheduler-kill":
            live = [r for r in self.replicas if r.process.poll() is None]
            victim = self.rng.choice(live)
            detail = self.fault("scheduler-kill", str(victim.process.pid))
            victim.process.wait(timeout=10)
            time.sleep(5)
            self.replicas.append(
                SchedulerProcess(self.admin, self.setup, f"soak-{len(self.replicas)}", max_poll_seconds=10)
            )
            return victim.url, detail + f"; a new replica started at {self.replicas[-1].url}"
        if kind in ("client-sigterm", "client-sigkill"):
            for _ in range(40):
                build = self.running_client()
                if build is not None:
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError("no client was running")
            name = "SIGTERM" if kind == "client-sigterm" else "SIGKILL"
            build.signalled = name
            os.kill(build.process.pid, signal.SIGTERM if name == "SIGTERM" else signal.SIGKILL)
            return f"build {build.index}", f"{name} to pid {build.process.pid}"
        raise ValueError(kind)

    # ---------------------------------------------------------------------------------- the run

    def say(self, line: str) -> None:
        print(f"soak: {line}", file=sys.stderr, flush=True)

    def run(self) -> dict:
        builds, faults = self.plan()
        self.say(f"{len(builds)} builds, {len(faults)} faults, seed {self.args.seed}, work dir {self.work}")
        self.setup = prepare(self.admin, self.work / "scheduler", [{"pools": [self.pool], "users": [CI_USER]}])
        self.scheduler_token = ci_scheduler_token()
        self.replicas = [SchedulerProcess(self.admin, self.setup, f"soak-{i}", max_poll_seconds=10) for i in range(2)]
        started = time.monotonic()
        try:
            threads: list[threading.Thread] = []
            for build in builds:
                # `concurrency` builds at once in this wave: wait for one to end before the next starts
                while sum(t.is_alive() for t in threads) >= build.concurrency:
                    time.sleep(0.2)
                with self.lock:
                    self.builds.append(build)
                thread = threading.Thread(target=self.run_build, args=(build,), daemon=True)
                thread.start()
                threads.append(thread)
                if build.index in faults:
                    injector = threading.Thread(target=self.inject, args=(faults[build.index],), daemon=True)
                    injector.start()
                    self.fault_threads.append(injector)
                time.sleep(0.3)
            for thread in threads + self.fault_threads:
                thread.join()
        finally:
            try:
                self.fault("clear")
            except Exception as exc:
                self.say(f"testbed/fault clear failed: {exc}")
            for replica in self.replicas:
                replica.stop()
        elapsed = time.monotonic() - started
        checks = self.check(builds)
        return self.summary(builds, elapsed, checks)

    # ---------------------------------------------------------------------------------- the checks

    def wait_until(self, what, seconds: float):
        deadline = time.monotonic() + seconds
        while True:
            try:
                left = what()
            except Exception as exc:  # the API server may still be settling after the last fault
                left = [f"unreadable: {exc}"]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(1)

    def held_leases(self) -> list[str]:
        now = self.admin.server_now()
        return [
            f"{name} held by {lease.holder}"
            for name, lease in list_pool_leases(self.admin, self.namespace, self.pool).items()
            if not lease.is_free(now)
        ]

    def ephemeral_pods(self) -> list[str]:
        pods = self.admin.request(
            "GET",
            f"/api/v1/namespaces/{self.namespace}/pods",
            query={"labelSelector": f"warmbuild.dev/ephemeral=true,warmbuild.dev/ephemeral-for={self.pool}"},
        ).body["items"]
        return [p["metadata"]["name"] for p in pods]

    def registry_digest(self, tag: str) -> str | None:
        host, _, rest = tag.partition("/")
        repo, _, reference = rest.rpartition(":")
        response = requests.get(
            f"http://{host}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES}, timeout=10
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]

    def check(self, builds: list[Build]) -> dict:
        problems: list[str] = []
        leases = self.wait_until(self.held_leases, 60)
        problems += [f"slot Lease still held: {line}" for line in leases]
        pods = self.wait_until(self.ephemeral_pods, 90)
        problems += [f"ephemeral pod left: {name}" for name in pods]
        tags_ok = unreported_killed = 0
        for build in builds:
            digest = self.registry_digest(build.tag)
            reported = reported_digest(build)
            if reported:
                if digest == reported:
                    tags_ok += 1
                else:
                    problems.append(f"build {build.index}: {build.tag} is {digest}, the build reported {reported}")
            elif digest is not None:
                if build.signalled in ("SIGKILL", "timeout"):
                    unreported_killed += 1  # pushed, then killed before it could say so
                else:
                    problems.append(
                        f"build {build.index}: {build.tag} exists ({digest}) but its build reported no digest"
                    )
            problems += [f"build {build.index}: {p}" for p in outcome_problems(build)]
        return {
            "problems": problems,
            "leases_held": len(leases),
            "ephemeral_pods_left": len(pods),
            "tags_verified": tags_ok,
            "tags_pushed_by_killed_clients": unreported_killed,
        }

    # ---------------------------------------------------------------------------------- figures

    def summary(self, builds: list[Build], elapsed: float, checks: dict) -> dict:
        # A signalled client is its own fault; the cluster's faults reach every build running meanwhile.
        windows = [(f.started, f.ended + FAULT_SETTLE_SECONDS) for f in self.faults if not f.kind.startswith("client-")]

        def faulted(b: Build) -> bool:
            return bool(b.signalled) or any(b.started <= end and b.ended >= start for start, end in windows)

        ok = [b for b in builds if outcome(b) == "success"]
        calm = [b.ended - b.started for b in ok if not faulted(b)]
        stormy = [b.ended - b.started for b in ok if faulted(b)]
        return {
            "mode": "quick" if self.args.quick else "full",
            "builds": len(builds),
            "seed": self.args.seed,
            "elapsed_seconds": round(elapsed, 1),
            "commit": commit(),
            "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "outcomes": dict(Counter(outcome(b) for b in builds)),
            "exit_codes": dict(sorted(Counter(str(b.exit_code) for b in builds).items())),
            "paths": dict(Counter(b.path for b in builds)),
            "placements": dict(Counter((b.result.get("placement") or {}).get("path", "none") for b in builds)),
            "retried": sum(1 for b in builds if attempts(b) > 1),
            "retried_succeeded": sum(1 for b in builds if attempts(b) > 1 and outcome(b) == "success"),
            "registry_retries": sum(int(b.result.get("registry_retries") or 0) for b in builds),
            "retry_causes": dict(
                Counter(
                    a.get("cause") or a.get("reason") or "?"
                    for b in builds
                    for a in (b.result.get("attempt_history") or [])[:-1]
                )
            ),
            "faulted_builds": sum(1 for b in builds if faulted(b)),
            "faults": dict(Counter(f.kind for f in self.faults if f.ok)),
            "faults_failed": [f"{f.kind}: {f.detail}" for f in self.faults if not f.ok],
            "fault_seconds": {
                k: round(sum(f.ended - f.started for f in self.faults if f.kind == k), 1) for k in FAULT_KINDS
            },
            "p50_no_fault": pct(calm, 50),
            "p95_no_fault": pct(calm, 95),
            "p50_fault": pct(stormy, 50),
            "p95_fault": pct(stormy, 95),
            "successes_no_fault": len(calm),
            "successes_fault": len(stormy),
            "failures": [
                f"build {b.index} ({b.workload}, {b.path}{', ' + b.signalled if b.signalled else ''}): exit {b.exit_code}: "
                f"{error_line(b)[:220]}"
                for b in builds
                if outcome(b) != "success"
            ],
            **checks,
        }


def reported_digest(build: Build) -> str | None:
    """The digest the build's result file says it pushed (None unless pushed)."""
    image = build.result.get("image") or {}
    return image.get("digest") if image.get("pushed") else None


def attempts(build: Build) -> int:
    value = build.result.get("attempts")
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int):
        return value
    return 1


def outcome(build: Build) -> str:
    if build.exit_code == 0 and build.result.get("status") == "success" and reported_digest(build):
        return "success"
    if build.signalled == "SIGKILL":
        return "killed (SIGKILL)"
    if build.signalled == "SIGTERM":
        return "cancelled (SIGTERM)" if build.exit_code == 143 else f"exit {build.exit_code} after SIGTERM"
    return f"failed, exit {build.exit_code}"


def error_line(build: Build) -> str:
    lines = [line for line in build.stderr.splitlines() if line.startswith("warmbuild: error:")]
    if lines:
        return lines[-1]
    return f"its post step (warmbuild release): {build.post_step}" if build.post_step else "no error line"


def outcome_problems(build: Build) -> list[str]:
    """What makes a build's ending unacceptable: no documented exit code, no or several error lines, a traceback."""
    problems = []
    if "Traceback (most recent call last)" in build.stderr:
        problems.append("a traceback on stderr")
    if build.signalled == "SIGKILL":
        if "TRACEBACK" in build.post_step or not build.post_step.startswith("exit 0"):
            problems.append(f"its post step (warmbuild release) ended badly: {build.post_step}")
        return problems
    if build.signalled == "timeout":
        return problems + ["did not end within the build timeout"]
    if build.exit_code == 0:
        if outcome(build) != "success":
            problems.append(
                f"exit 0 but the result says {build.result.get('status')!r}, digest {reported_digest(build)!r}"
            )
        return problems
    if build.exit_code not in DOCUMENTED_EXITS:
        problems.append(f"exit {build.exit_code} is not a documented exit code")
    errors = [line for line in build.stderr.splitlines() if line.startswith("warmbuild: error:")]
    if build.signalled != "SIGTERM" and len(errors) != 1:
        problems.append(f"{len(errors)} 'warmbuild: error:' lines, not one")
    return problems


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))], 1)


def commit() -> str:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def render(summary: dict) -> str:
    def seconds(value) -> str:
        return "–" if value is None else f"{value:.1f} s"

    faults = ", ".join(f"{kind} {count}" for kind, count in sorted(summary["faults"].items())) or "none"
    lines = [
        f"Measured {summary['measured_at']} on commit `{summary['commit']}` (seed {summary['seed']}): "
        f"{summary['builds']} builds in {summary['elapsed_seconds'] / 60:.1f} min.",
        "",
        "| | |",
        "|---|---|",
        f"| builds | {summary['builds']} ({', '.join(f'{k} {v}' for k, v in sorted(summary['paths'].items()))}) |",
        f"| placements | {', '.join(f'{k} {v}' for k, v in sorted(summary['placements'].items()))} |",
        f"| faults injected | {sum(summary['faults'].values())}: {faults} |",
        f"| builds with a fault in their window | {summary['faulted_builds']} |",
        f"| outcomes | {', '.join(f'{k}: {v}' for k, v in sorted(summary['outcomes'].items()))} |",
        f"| exit codes | {', '.join(f'{k}: {v}' for k, v in summary['exit_codes'].items())} |",
        f"| builds retried on another builder (`attempts` > 1) | {summary['retried']} "
        f"({summary['retried_succeeded']} then succeeded; causes: "
        f"{', '.join(f'{k} {v}' for k, v in sorted(summary['retry_causes'].items())) or 'none'}) |",
        f"| pushes retried after a registry failure (`registry_retries`) | {summary['registry_retries']} |",
        f"| build time, no fault (p50 / p95, {summary['successes_no_fault']} successes) | "
        f"{seconds(summary['p50_no_fault'])} / {seconds(summary['p95_no_fault'])} |",
        f"| build time, with a fault (p50 / p95, {summary['successes_fault']} successes) | "
        f"{seconds(summary['p50_fault'])} / {seconds(summary['p95_fault'])} |",
        f"| tags checked against the reported digest | {summary['tags_verified']} (all equal) |"
        if not any("is sha256" in p or "reported no digest" in p for p in summary["problems"])
        else f"| tags checked against the reported digest | {summary['tags_verified']} equal; see lost |",
        f"| slot Leases held after the run | {summary['leases_held']} |",
        f"| ephemeral pods left after the run | {summary['ephemeral_pods_left']} |",
        f"| lost (any check failed) | {len(summary['problems'])} |",
    ]
    if summary["failures"]:
        lines += ["", "Builds that did not succeed, with their one line:", ""]
        lines += [f"- {line}" for line in summary["failures"]]
    if summary["problems"]:
        lines += ["", "What the checks found:", ""]
        lines += [f"- {line}" for line in summary["problems"]]
    if summary["faults_failed"]:
        lines += ["", "Faults that could not be applied:", ""]
        lines += [f"- {line}" for line in summary["faults_failed"]]
    return "\n".join(lines) + "\n"


def write_report(path: Path, summary: dict) -> None:
    """Replace this mode's section (between its markers) in docs/reliability.md; the rest is prose."""
    begin, end = f"<!-- soak-{summary['mode']}:begin -->", f"<!-- soak-{summary['mode']}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{render(summary)}{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text += f"\n## Soak ({summary['mode']})\n\n{block}\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 builds, every fault kind once")
    parser.add_argument("--builds", type=int, default=None, help="builds in all (default 200, --quick 40)")
    parser.add_argument("--seed", type=int, default=None, help="the plan's random seed (default: random)")
    parser.add_argument("--max-wait", type=float, default=180, help="each build's --max-wait")
    parser.add_argument("--build-timeout", type=float, default=600, help="a build still running after this is killed")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary as JSON here")
    parser.add_argument("--no-report", action="store_true", help="do not touch docs/reliability.md")
    args = parser.parse_args()
    args.builds = args.builds or (40 if args.quick else 200)
    args.seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    for name in (
        "KUBECONFIG",
        "WARMBUILD_CI_KUBECONFIG",
        "WARMBUILD_REGISTRY",
        "WARMBUILD_BASE_IMAGE",
        "WARMBUILD_TESTBED_DIR",
    ):
        if not os.environ.get(name):
            print(
                f'bench/soak: {name} is not set: run under the testbed lock after eval "$(testbed/up)"', file=sys.stderr
            )
            return 2
    summary = Soak(args).run()
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_report:
        write_report(args.report, summary)
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
