"""A node of the tests' own: this checkout's testbed/node_emulator.py on a tainted Node.

The shared testbed's emulated node runs the emulator of whichever checkout started the testbed.
Tests that need what this checkout's emulator does (real mTLS from a pod's Secret volumes) start
their own on Node NAME (taint `warmbuild.dev/emulator=NAME:NoSchedule`, so only pods that tolerate
it land there) with pod addresses from FIRST_IP, and stop it by its PID afterwards; the Node object
is deleted too. Delete the pods (their namespace) while it still runs, so that it finalizes them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

EMULATOR = Path(__file__).resolve().parents[2] / "testbed" / "node_emulator.py"
TAINT_KEY = "warmbuild.dev/emulator"


def toleration(node: str) -> dict:
    return {"key": TAINT_KEY, "operator": "Equal", "value": node, "effect": "NoSchedule"}


def node_selector(node: str) -> dict:
    return {"kubernetes.io/hostname": node}


def _node_ready(core, name: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        node = core.read_node(name)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


@contextmanager
def private_node(core, name: str, first_ip: str, state_dir: Path):
    state_dir.mkdir(parents=True, exist_ok=True)
    log = open(state_dir / "node-emulator.log", "ab")
    process = subprocess.Popen(
        [
            sys.executable,
            str(EMULATOR),
            "--kubeconfig",
            os.environ["KUBECONFIG"],
            "--node",
            name,
            "--state-dir",
            str(state_dir),
            "--first-ip",
            first_ip,
            "--taint",
            f"{TAINT_KEY}={name}:NoSchedule",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _node_ready(core, name):
            assert process.poll() is None, f"the node emulator exited; see {state_dir}/node-emulator.log"
            assert time.monotonic() < deadline, f"node {name} not Ready after 60s"
            time.sleep(0.5)
        yield name
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        from kubernetes.client.rest import ApiException

        try:
            core.delete_node(name)
        except ApiException as error:
            if error.status != 404:
                raise


def service_account_kubeconfig(core, service_account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig for a ServiceAccount, its token minted with TokenRequest as admin."""
    answer = core.create_namespaced_service_account_token(
        service_account,
        namespace,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    admin = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "ci", "user": {"token": answer.status.token}}],
                "contexts": [
                    {"name": "ci", "context": {"cluster": cluster["name"], "user": "ci", "namespace": namespace}}
                ],
                "current-context": "ci",
            }
        )
    )
    path.chmod(0o600)
    return path
