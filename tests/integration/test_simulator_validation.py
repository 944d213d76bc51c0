"""The fleet simulator against reality: one arrival script, run on the real pool and in the simulator.

33 builds of the tiny app through `warmbuild build --pool` subprocesses (real control plane, Leases,
3 buildkitd builders × 2 slots), four workload keys (--cache-key) chosen so that two share an affine
builder, launched in waves of three with code-only edits to app.py. Waves that send three builds to
one builder make the third wait (--max-wait 2, --fallback wait) and spill to a builder without its
cache. Each key's app pins its own requirements, so a builder holds a key's cache only after it
built that key; a build hit a warm cache when its `RUN pip install` step was cached.

The same arrivals (from `warmbuild history export`) then run in the simulator, with durations
learned from those records: its affine-hit rate and p50 end-to-end build time must agree with the
real run's within 20 %.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from poolkit import wait_for

from warmbuild.kube.client import connect
from warmbuild.kube.names import EPHEMERAL_LABEL, pods_path
from warmbuild.pool.affinity import preference_order
from warmbuild.pool.leases import list_pool_leases
from warmbuild.pool.membership import discover_builders
from warmbuild.pool.workload import key_hash
from warmbuild.simulate.model import FleetConfig, SimulationConfig, WarmbuildOptions
from warmbuild.simulate.report import policy_metrics
from warmbuild.simulate.runs import run_policy
from warmbuild.simulate.workload import read_history_file, workload_from_history

POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
MAX_WAIT = 2
STAGGER = 0.3  # seconds between the launches of one wave
# Key roles: A1 and A2 share an affine builder; B and C have one each.
WAVES = [
    ["A1", "B", "C"],
    ["A2", "A1", "B"],
    ["A1", "A1", "A2"],
    ["B", "C", "A1"],
    ["A2", "A2", "A1"],
    ["C", "C", "B"],
    ["A1", "A2", "A1"],
    ["B", "B", "C"],
    ["A1", "A1", "A1"],
    ["C", "A2", "B"],
    ["A2", "A1", "A2"],
]
SLOW_STEP = (
    "RUN python /app/app.py && sleep 3\n"  # every build runs it: a code-only build takes seconds, as a real one would
)


def held(client) -> list[str]:
    now = client.server_now()
    return [n for n, lease in list_pool_leases(client, NAMESPACE, POOL).items() if not lease.is_free(now)]


def ephemeral_pods(client) -> list[str]:
    items = client.request("GET", pods_path(NAMESPACE), query={"labelSelector": f"{EPHEMERAL_LABEL}=true"}).body[
        "items"
    ]
    return [p["metadata"]["name"] for p in items]


@pytest.fixture(autouse=True)
def quiet_pool(ci):
    wait_for(lambda: len(discover_builders(ci, NAMESPACE, POOL)) == 3, 120, what="3 ready builders")
    wait_for(lambda: not held(ci) and not ephemeral_pods(ci), 60, what="a quiet pool before the test")
    yield
    wait_for(lambda: not held(ci), 30, what="every slot free after the test")
    wait_for(lambda: not ephemeral_pods(ci), 30, what="no ephemeral builder left after the test")


class LeaseWatcher:
    """Samples the pool's held slot Leases while the script runs: a slot held for a workload key
    that is not ours means another client shared the pool, and the real run is not the script's."""

    def __init__(self, ours: set[str]):
        self.client = connect(os.environ["WARMBUILD_CI_KUBECONFIG"])
        self.ours = ours
        self.foreign: dict[str, str] = {}  # holder identity -> builder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            now = self.client.server_now()
            for lease in list_pool_leases(self.client, NAMESPACE, POOL).values():
                if lease.is_free(now):
                    continue
                if lease.workload_key not in self.ours:
                    self.foreign[lease.holder] = lease.builder or "?"

    def __enter__(self) -> LeaseWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def choose_keys(builders: list[str], run: str) -> dict[str, str]:
    """Four cache keys: two whose affine builder is the same, one for each other builder."""
    by_builder: dict[str, list[str]] = {b: [] for b in builders}
    for i in range(500):
        key = f"simval-{run}-{i}"
        by_builder[preference_order(key, builders)[0]].append(key)
    shared = builders[0]
    others = [b for b in builders if b != shared]
    return {
        "A1": by_builder[shared][0],
        "A2": by_builder[shared][1],
        "B": by_builder[others[0]][0],
        "C": by_builder[others[1]][0],
    }


def make_app(tmp_path: Path, fixtures: Path, key: str) -> Path:
    app = tmp_path / key
    shutil.copytree(fixtures / "tiny-app", app)
    (app / "requirements.txt").write_text((fixtures / "tiny-app" / "requirements.txt").read_text() + f"# {key}\n")
    dockerfile = (app / "Dockerfile").read_text()
    (app / "Dockerfile").write_text(dockerfile.replace('CMD ["python"', SLOW_STEP + 'CMD ["python"', 1))
    return app


def launch(app: Path, key: str, registry: str, result: Path, state: Path) -> subprocess.Popen:
    (app / "app.py").write_text(f'print("code change {uuid.uuid4().hex}")\n')
    argv = [
        sys.executable,
        "-m",
        "warmbuild.cli",
        "build",
        str(app),
        "--pool",
        POOL,
        "--cache-key",
        key,
        "--build-arg",
        f"REGISTRY={registry}",
        "--max-wait",
        str(MAX_WAIT),
        "--fallback",
        "wait",
        "--result-file",
        str(result),
        "--state-file",
        str(state),
    ]
    env = {**os.environ, "KUBECONFIG": os.environ["WARMBUILD_CI_KUBECONFIG"], "WARMBUILD_BUILDER": ""}
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def pip_step_cached(result: dict) -> bool:
    return next(s for s in result["steps"] if "RUN pip install" in s["name"])["cached"]


def run_script(apps: dict[str, Path], keys: dict[str, str], registry: str, tmp_path: Path) -> list[tuple[str, dict]]:
    """The arrival script on the real pool: the waves, three builds each, 0.3 s apart."""
    results = []
    for w, wave in enumerate(WAVES):
        running = []
        for i, role in enumerate(wave):
            result = tmp_path / f"result-{w}-{i}.json"
            # Each build of a wave gets its own copy of the app: concurrent builds must not share an app.py.
            app = tmp_path / f"wave-{w}-{i}"
            shutil.copytree(apps[role], app)
            running.append((role, result, launch(app, keys[role], registry, result, tmp_path / f"state-{w}-{i}.json")))
            time.sleep(STAGGER)
        for role, result, process in running:
            _, stderr = process.communicate(timeout=240)
            assert process.returncode == 0, f"{role}: {stderr[-2000:]}"
            results.append((role, json.loads(result.read_text())))
    return results


def test_the_simulator_agrees_with_the_real_pool_on_affine_hits_and_p50_build_time(
    ci, registry, tmp_path, run_warmbuild
):
    fixtures = Path(__file__).resolve().parent.parent / "fixtures"
    builders = sorted(b.name for b in discover_builders(ci, NAMESPACE, POOL))
    keys = choose_keys(builders, uuid.uuid4().hex[:8])
    apps = {role: make_app(tmp_path, fixtures, key) for role, key in keys.items()}

    started = time.monotonic()
    with LeaseWatcher(set(keys.values())) as watcher:
        results = run_script(apps, keys, registry, tmp_path)
    elapsed = time.monotonic() - started
    if watcher.foreign:
        # Only on a testbed shared with another session: CI runs the suite alone.
        pytest.skip(f"another client held slots during the run ({watcher.foreign}): the real run is not the script's")

    assert len(results) == 33
    paths = [r["placement"]["path"] for _, r in results]
    assert "ephemeral" not in paths
    assert paths.count("spill") >= 3, paths  # the waves of three on one builder made some spill
    real_hits = sum(pip_step_cached(r) for _, r in results) / len(results)
    real_p50 = statistics.median(r["timings"]["total_seconds"] for _, r in results)

    export = tmp_path / "history.jsonl"
    done = run_warmbuild(
        "history",
        "export",
        "--pool",
        POOL,
        "--output",
        str(export),
        env={"KUBECONFIG": os.environ["WARMBUILD_CI_KUBECONFIG"]},
    )
    assert done.returncode == 0, done.stderr
    hashes = {key_hash(k): k for k in keys.values()}
    records = [r for r in read_history_file(export) if r.key in hashes]
    assert len(records) == 33, f"{len(records)} of 33 builds recorded in the pool's history"

    # Each replayed build keeps its own duration's deviation from its key's median: the durations are that run's.
    workload = workload_from_history(records, route_keys=hashes, jitter=True)
    config = SimulationConfig(
        fleet=FleetConfig(builders=3, slots=2, cache_keys=100, builder_names=tuple(builders)),
        warmbuild=WarmbuildOptions(max_wait_seconds=MAX_WAIT, fallback="wait", recheck_seconds=0.5),
    )
    run = run_policy(workload, "warmbuild", config)
    simulated = policy_metrics(run)
    if os.environ.get("WARMBUILD_VALIDATION_DUMP"):  # for a closer look: both runs, build by build
        dump = Path(os.environ["WARMBUILD_VALIDATION_DUMP"])
        dump.mkdir(parents=True, exist_ok=True)
        shutil.copy(export, dump / "history.jsonl")
        (dump / "real.json").write_text(
            json.dumps([{"role": role, "key": keys[role], **r} for role, r in results], indent=1)
        )
        (dump / "simulated.jsonl").write_text("".join(json.dumps(o.__dict__) + "\n" for o in run.outcomes))

    report = (
        f"real: {len(results)} builds in {elapsed:.0f}s, affine-hit {real_hits:.1%}, p50 {real_p50:.2f}s, "
        f"paths {dict((p, paths.count(p)) for p in set(paths))}; simulated: affine-hit {simulated.affine_hit_rate:.1%}, "
        f"p50 {simulated.total_p50:.2f}s, paths {simulated.path_shares}"
    )
    print(report)
    assert simulated.builds == 33 and simulated.failed == 0, report
    assert abs(simulated.affine_hit_rate - real_hits) <= 0.2 * real_hits, report
    assert abs(simulated.total_p50 - real_p50) <= 0.2 * real_p50, report
