"""What one ML build costs a builder: CPU seconds, peak memory and wall time, alone and concurrent.

    eval "$(testbed/up)" && sudo python bench/builder_sizing.py --concurrency 1 2 [--push] [--context examples/ml-app]

Starts its own buildkitd (the testbed's binary and config, a scratch root, 127.0.0.3:1234) inside a
fresh cgroup, with `defaultCgroupParent` pointing its RUN containers into the same cgroup, so the cgroup's
counters hold the daemon and every build step: CPU time (cpuacct.usage / cpu.stat usage_usec) and
peak memory (memory.max_usage_in_bytes / memory.peak; page cache included, as a memory limit sees
it). For each concurrency N it runs N cold builds of the context at once (--no-cache, each with its
own code change), then N warm rebuilds (a code-only change: the case a warm pool exists for), each
through `warmbuild build --builder`, and prints one line per phase. Needs root (cgroups). Stops
what it started (by PID) and removes its cgroup and scratch root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADDRESS = "127.0.0.3"
PORT = 1234


class Cgroup:
    """One cgroup on v1 (memory + cpuacct hierarchies) or v2 (unified); root only."""

    def __init__(self, name: str):
        root = Path("/sys/fs/cgroup")
        self.v2 = (root / "cgroup.controllers").is_file()
        if self.v2:
            self.dirs = [root / name]
        else:
            self.dirs = [root / "memory" / name, root / "cpuacct" / name]
        for directory in self.dirs:
            directory.mkdir(exist_ok=True)
        self.name = name

    def add(self, pid: int) -> None:
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(pid))

    def cpu_seconds(self) -> float:
        if self.v2:
            stats = dict(line.split() for line in (self.dirs[0] / "cpu.stat").read_text().splitlines())
            return int(stats["usage_usec"]) / 1e6
        return int((self.dirs[1] / "cpuacct.usage").read_text()) / 1e9

    def reset_peak(self) -> None:
        if self.v2:
            peak = self.dirs[0] / "memory.peak"
            try:
                peak.write_text("0")  # kernels >= 6.12 reset on write
            except OSError:
                pass
        else:
            (self.dirs[0] / "memory.max_usage_in_bytes").write_text("0")

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.dirs[0] / name).read_text())

    def remove(self) -> None:
        """rmdir, deepest first (runc leaves <name>/buildkit behind); a cgroup dir holds no files to delete."""
        for directory in self.dirs:
            nested = sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for path in [*nested, directory]:
                for _ in range(50):
                    try:
                        path.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)


def wait_listening(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ADDRESS, PORT), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"buildkitd did not listen on {ADDRESS}:{PORT}")


def copy_context(source: Path, target: Path, marker: str, change_requirements: bool) -> Path:
    shutil.copytree(source, target)
    main = target / "app" / "main.py"
    main.write_text(main.read_text() + f"\n# {marker}\n")
    if change_requirements:  # a cold build: nothing of the dependency layer may be reused either
        requirements = target / "requirements.txt"
        requirements.write_text(requirements.read_text() + f"# {marker}\n")
    return target


def run_builds(contexts: list[Path], registry: str, no_cache: bool, push: bool, workdir: Path) -> list[dict]:
    processes = []
    for index, context in enumerate(contexts):
        result = workdir / f"result-{uuid.uuid4().hex[:6]}-{index}.json"
        argv = [
            sys.executable,
            "-m",
            "warmbuild.cli",
            "build",
            str(context),
            "--builder",
            f"tcp://{ADDRESS}:{PORT}",
            "--build-arg",
            f"REGISTRY={registry}",
            "--result-file",
            str(result),
        ]
        if no_cache:
            argv.append("--no-cache")
        if push:  # export: layers compressed and sent, as every CI build that ships an image does
            argv += ["--tag", f"{registry}/warmbuild-bench/sizing-{index}:{uuid.uuid4().hex[:8]}", "--push"]
        log = open(workdir / f"{result.stem}.log", "w")
        processes.append(
            (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), result, log)
        )
    results = []
    for process, result, log in processes:
        code = process.wait()
        log.close()
        if code != 0:
            raise SystemExit(f"a build failed (exit {code}); see {log.name}")
        results.append(json.loads(result.read_text()))
    return results


def measure(
    cgroup: Cgroup, label: str, contexts: list[Path], registry: str, no_cache: bool, push: bool, workdir: Path
) -> dict:
    cgroup.reset_peak()
    cpu_before = cgroup.cpu_seconds()
    started = time.monotonic()
    results = run_builds(contexts, registry, no_cache, push, workdir)
    wall = time.monotonic() - started
    row = {
        "phase": label,
        "builds": len(contexts),
        "wall_seconds": round(wall, 1),
        "build_seconds_each": [round(r["timings"]["total_seconds"], 1) for r in results],
        "export_seconds_each": [round(r["timings"]["export_seconds"], 1) for r in results],
        "cpu_seconds": round(cgroup.cpu_seconds() - cpu_before, 1),
        "peak_memory_mib": round(cgroup.peak_bytes() / 2**20),
    }
    row["cpu_cores_busy"] = round(row["cpu_seconds"] / wall, 2) if wall else 0.0
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=Path, default=REPO / "examples" / "ml-app")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--registry", default=os.environ.get("WARMBUILD_REGISTRY", "127.0.0.1:5000"))
    parser.add_argument(
        "--push", action="store_true", help="tag and push every build to --registry (export costs included)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: cgroups")
    buildkit = Path(os.environ.get("WARMBUILD_BUILDCTL", "")).parent
    if not (buildkit / "buildkitd").is_file():
        raise SystemExit('no buildkitd: eval "$(testbed/up)" first (WARMBUILD_BUILDCTL)')

    name = f"warmbuild-sizing-{os.getpid()}"
    cgroup = Cgroup(name)
    workdir = Path(tempfile.mkdtemp(prefix="warmbuild-sizing-", dir="/var/tmp"))
    config = workdir / "buildkitd.toml"
    testbed_config = (REPO / "testbed" / "config" / "buildkitd.toml").read_text()
    # RUN containers go into our cgroup too (v1: one path in every hierarchy; v2: under the unified root).
    config.write_text(testbed_config.replace("[worker.oci]\n", f'[worker.oci]\n  defaultCgroupParent = "/{name}"\n', 1))
    daemon = None
    try:
        daemon = subprocess.Popen(
            [
                str(buildkit / "buildkitd"),
                "--config",
                str(config),
                "--addr",
                f"tcp://{ADDRESS}:{PORT}",
                "--root",
                str(workdir / "root"),
                "--otel-socket-path",
                str(workdir / "otel.sock"),
                "--oci-worker-net",
                "host",
            ],
            stdout=open(workdir / "buildkitd.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        cgroup.add(daemon.pid)
        wait_listening(60)
        os.environ["PATH"] = f"{buildkit}:{os.environ['PATH']}"
        rows = []
        for n in args.concurrency:
            run_id = uuid.uuid4().hex[:8]
            cold = [
                copy_context(args.context, workdir / f"cold-{run_id}-{i}", f"cold {run_id} {i}", True) for i in range(n)
            ]
            suffix = " push" if args.push else ""
            rows.append(measure(cgroup, f"cold x{n}{suffix}", cold, args.registry, True, args.push, workdir))
            for i, context in enumerate(cold):
                main_py = context / "app" / "main.py"
                main_py.write_text(main_py.read_text() + f"# warm {run_id} {i}\n")
            rows.append(measure(cgroup, f"warm x{n}{suffix}", cold, args.registry, False, args.push, workdir))
        return 0
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        cgroup.remove()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
