"""The gateway's cost, side by side: a warm code-change build through the gateway vs the same build
direct, and the time to obtain a grant with its certificate.

    eval "$(testbed/up)" && python bench/gateway_overhead.py --repeat 7 --grants 40

Installs the chart with the gateway on a private node (tests/integration/gateway_harness.py: real
HAProxy from Debian, real buildkitd with the builders' own certificates, the scheduler behind the
gateway), then alternates, on the same warm builder and the same tiny app with a one-line code
edit each time:

- through the gateway: `warmbuild build --pool` with only the scheduler's URL and a token (mode 3);
- direct: `warmbuild build --builder tcp://POD_IP:1234` with the chart's CI client certificate,
  verifying the builder's own name (what an in-cluster runner does once it holds a slot).

Each build's "time on the builder" is the result's total minus queue and startup: the reachability
check, `buildctl debug workers` and the solve, each a new TLS connection — through the gateway
that is two handshakes (runner→gateway, gateway→builder) and a map lookup, and every byte of the
build context and progress crosses the proxy. The overhead is the median of the per-pair
differences. Grant + certificate: a fresh `SchedulerClient` per sample (as a CI job has), its
acquire — key and CSR made, HTTPS to the scheduler through the gateway (TLS passed through), the
placement, the signature — timed in-process, then released.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from gateway_harness import NAMESPACE, POOL, RELEASE, gateway_release  # noqa: E402

from warmbuild.pool.leases import HolderInfo  # noqa: E402
from warmbuild.pool.placement import PlacementRequest  # noqa: E402
from warmbuild.pool.workload import explicit_key  # noqa: E402
from warmbuild.scheduler.client import SchedulerClient, SchedulerOptions  # noqa: E402

KEY = "bench-gateway-overhead"


def on_builder(result: dict) -> float:
    t = result["timings"]
    return t["total_seconds"] - t["queue_seconds"] - t["startup_seconds"]


def build(app: Path, argv: list[str], env: dict, workdir: Path) -> dict:
    (app / "app.py").write_text(f'print("bench {uuid.uuid4().hex}")\n')
    result_file = workdir / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "warmbuild.cli", "build", str(app), *argv, "--result-file", str(result_file),
         "--build-arg", f"REGISTRY={os.environ['WARMBUILD_REGISTRY']}"],
        env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, cwd=workdir,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"a build failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(result_file.read_text())


def runner_env(setup, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WARMBUILD_", "KUBECONFIG", "GITHUB_", "GITLAB_"))}
    env.update(
        WARMBUILD_BUILDCTL=os.environ["WARMBUILD_BUILDCTL"],
        WARMBUILD_SCHEDULER=setup.url,
        WARMBUILD_SCHEDULER_CA=str(setup.scheduler_ca),
        WARMBUILD_SCHEDULER_TOKEN=setup.token,
        XDG_RUNTIME_DIR=str(home),
    )
    return env


def grant_seconds(setup, samples: int) -> list[float]:
    times = []
    request = PlacementRequest("unused", POOL, explicit_key(KEY), HolderInfo("bench/grant"), 0, 15)
    for _ in range(samples):
        client = SchedulerClient(
            SchedulerOptions(urls=(setup.url,), token=setup.token, ca_file=str(setup.scheduler_ca))
        )
        started = time.perf_counter()
        grant = client.acquire(request)
        elapsed = time.perf_counter() - started
        assert grant.gateway is not None and grant.gateway.cert.is_file()
        client.release(grant)
        client.close()
        times.append(elapsed)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="build pairs (default 7)")
    parser.add_argument("--grants", type=int, default=40, help="grant+certificate samples (default 40)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "gateway-overhead.json")
    args = parser.parse_args()
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=os.environ["KUBECONFIG"]))
    with tempfile.TemporaryDirectory(prefix="wb-bench-gw-") as tmp:
        work = Path(tmp)
        app = work / "app"
        subprocess.run(["cp", "-r", str(ROOT / "tests" / "fixtures" / "tiny-app"), str(app)], check=True)
        with gateway_release(core, work / "setup") as setup:
            env = runner_env(setup, work)
            gateway_argv = ["--pool", POOL, "--cache-key", KEY]
            first = build(app, gateway_argv, env, work)  # cold for this builder: not counted
            builder = first["placement"]["builder_name"]
            pod_ip = core.read_namespaced_pod(builder, NAMESPACE).status.pod_ip
            secret = core.read_namespaced_secret(f"{RELEASE}-client-tls", NAMESPACE)
            tls = {}
            for key in ("ca.crt", "tls.crt", "tls.key"):
                path = work / f"client-{key}"
                path.write_bytes(base64.b64decode(secret.data[key]))
                path.chmod(0o600)
                tls[key] = path
            direct_argv = [
                "--builder", f"tcp://{pod_ip}:1234", "--tls-ca", str(tls["ca.crt"]), "--tls-cert", str(tls["tls.crt"]),
                "--tls-key", str(tls["tls.key"]), "--tls-server-name", f"{builder}.{RELEASE}-builder.{NAMESPACE}.svc",
            ]  # fmt: skip
            build(app, direct_argv, env, work)  # warm both paths once
            pairs = []
            for index in range(args.repeat):
                order = [("gateway", gateway_argv), ("direct", direct_argv)]
                if index % 2:
                    order.reverse()
                seconds = {}
                for name, argv in order:
                    result = build(app, argv, env, work)
                    if name == "gateway":
                        assert result["placement"]["builder_name"] == builder, "the affine builder changed"
                    seconds[name] = on_builder(result)
                pairs.append(seconds)
                print(
                    f"pair {index + 1}: gateway {seconds['gateway']:.3f}s, direct {seconds['direct']:.3f}s", flush=True
                )
            grants = grant_seconds(setup, args.grants)
    gateway_times = [p["gateway"] for p in pairs]
    direct_times = [p["direct"] for p in pairs]
    overhead = [p["gateway"] - p["direct"] for p in pairs]
    summary = {
        "pairs": pairs,
        "gateway_median_seconds": round(statistics.median(gateway_times), 3),
        "direct_median_seconds": round(statistics.median(direct_times), 3),
        "overhead_median_ms": round(1000 * statistics.median(overhead), 1),
        "grant_p50_ms": round(1000 * percentile(grants, 0.5), 1),
        "grant_p95_ms": round(1000 * percentile(grants, 0.95), 1),
        "grant_samples": len(grants),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "pairs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
