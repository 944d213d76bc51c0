"""Time to the first build step: a warm slot vs an ephemeral builder, side by side.

    eval "$(testbed/up)" && python bench/ephemeral_vs_warm.py --repeat 5

Both run `warmbuild build --pool` as a CI job would, interleaved, on the tiny test app (a code edit
each run). "First step" is the first Dockerfile step ([1/N] FROM …) as BuildKit timestamps it,
measured from the moment the CI job launched warmbuild. The whole build shows the rest of the
difference: a fresh builder pulls the base image and imports the registry cache. For the ephemeral runs the affine
builder's slots are held by other (simulated) jobs and `--fallback ephemeral` is given.

Caveat: the testbed's node emulator starts buildkitd directly — there is no image pull and no
container runtime — so the ephemeral startup here is a lower bound of what a cluster shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from warmbuild.kube.client import connect
from warmbuild.pool.affinity import preference_order
from warmbuild.pool.leases import HolderInfo, list_pool_leases, release_slot, try_acquire_slot
from warmbuild.pool.membership import discover_builders

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
POOL = os.environ.get("WARMBUILD_POOL", "default")


def first_step_seconds(result: dict, launched: float) -> float:
    starts = [
        datetime.fromisoformat(s["started"]).timestamp()
        for s in result["steps"]
        if s["started"] and s["name"].startswith("[") and not s["name"].startswith("[internal]")
    ]
    return min(starts) - launched


def run_once(app: Path, key: str, ephemeral: bool, workdir: Path) -> dict:
    (app / "app.py").write_text(f'print("bench {uuid.uuid4().hex}")\n')
    result_file = workdir / "result.json"
    registry = os.environ["WARMBUILD_REGISTRY"]
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
        "--tag",
        f"{registry}/bench/first-step:{'eph' if ephemeral else 'warm'}",
        "--push",
        "--result-file",
        str(result_file),
        "--state-file",
        str(workdir / "state.json"),
    ]
    if ephemeral:
        argv += ["--fallback", "ephemeral"]
    env = {**os.environ, "KUBECONFIG": os.environ["WARMBUILD_CI_KUBECONFIG"], "WARMBUILD_BUILDER": ""}
    launched = time.time()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"build failed: {done.stderr[-2000:]}")
    result = json.loads(result_file.read_text())
    expected = "ephemeral" if ephemeral else "warm"
    if result["placement"]["path"] != expected:
        raise SystemExit(
            f"expected a {expected} build, got {result['placement']['path']}: {result['placement']['reason']}"
        )
    return {
        "first_step": first_step_seconds(result, launched),
        "total": time.time() - launched,
        "startup": result["timings"]["startup_seconds"],
    }


def hold_slots_of(client, builder_name: str) -> list:
    builder = next(b for b in discover_builders(client, NAMESPACE, POOL) if b.name == builder_name)
    grants = []
    for _ in range(builder.slots):
        grant = try_acquire_slot(
            client,
            NAMESPACE,
            POOL,
            builder,
            HolderInfo(identity=f"bench-{uuid.uuid4().hex[:6]}"),
            list_pool_leases(client, NAMESPACE, POOL),
            duration=60,
        )
        if grant is None:
            raise SystemExit(f"{builder_name} has a busy slot: run the bench on an idle pool")
        grants.append(grant)
    return grants


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    client = connect(os.environ["WARMBUILD_CI_KUBECONFIG"])
    key = f"bench-first-step-{uuid.uuid4().hex[:8]}"
    affine = preference_order(key, [b.name for b in discover_builders(client, NAMESPACE, POOL)])[0]
    rows = {"warm": [], "ephemeral": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        app = workdir / "app"
        shutil.copytree(ROOT / "tests" / "fixtures" / "tiny-app", app)
        run_once(app, key, False, workdir)  # fill the affine builder's cache and the registry cache first
        for _ in range(args.repeat):
            rows["warm"].append(run_once(app, key, False, workdir))
            grants = hold_slots_of(client, affine)
            try:
                rows["ephemeral"].append(run_once(app, key, True, workdir))
            finally:
                for grant in grants:
                    release_slot(client, NAMESPACE, grant.name, grant.holder)
    print("| path | runs | first build step s, median (min–max) | builder startup s | whole build s |")
    print("|---|---:|---:|---:|---:|")
    for path, runs in rows.items():
        print(
            f"| {path} | {len(runs)} | {summary([r['first_step'] for r in runs])} | "
            f"{summary([r['startup'] for r in runs])} | {summary([r['total'] for r in runs])} |"
        )
    warm = statistics.median(r["first_step"] for r in rows["warm"])
    eph = statistics.median(r["first_step"] for r in rows["ephemeral"])
    whole = statistics.median(r["total"] for r in rows["ephemeral"]) / statistics.median(
        r["total"] for r in rows["warm"]
    )
    print(f"time to first build step, ephemeral/warm: {eph / warm:.1f}x; whole code-change build: {whole:.1f}x")


if __name__ == "__main__":
    main()
