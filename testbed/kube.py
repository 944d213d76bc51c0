#!/usr/bin/env python3
"""kube.py: the two kubectl verbs the testbed needs (there is no kubectl here).

kube.py --kubeconfig ADMIN apply FILE...
    server-side apply of every document in the YAML files (idempotent; the testbed owns the fields)
kube.py --kubeconfig ADMIN wait-ready --namespace NS --selector LABELS --count N [--port P] [--timeout S] [--while-pid PID]
    wait until N pods matching LABELS are Ready (and accept connections on podIP:P); give up early
    when process PID (the node emulator) exits
"""

import argparse
import os
import socket
import sys
import time

import yaml
from kubernetes import client, config, dynamic

FIELD_MANAGER = "warmbuild-testbed"


def apply_files(api_client: client.ApiClient, paths: list[str]) -> None:
    resources = dynamic.DynamicClient(api_client).resources
    for path in paths:
        with open(path) as stream:
            for document in yaml.safe_load_all(stream):
                if not document:
                    continue
                resource = resources.get(api_version=document["apiVersion"], kind=document["kind"])
                metadata = document["metadata"]
                resource.server_side_apply(
                    body=document,
                    name=metadata["name"],
                    namespace=metadata.get("namespace"),
                    field_manager=FIELD_MANAGER,
                    force_conflicts=True,
                )
                where = f"{metadata['namespace']}/" if metadata.get("namespace") else ""
                print(f"testbed: applied {document['kind']} {where}{metadata['name']}", file=sys.stderr)


def is_ready(pod) -> bool:
    if pod.metadata.deletion_timestamp or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def accepts(ip: str | None, port: int | None) -> bool:
    """True when nothing is to be checked, or ip:port accepts a connection (a just-restarted node
    emulator may not have replaced a pod's Ready status yet)."""
    if port is None:
        return True
    try:
        socket.create_connection((ip, port), timeout=1).close()
        return True
    except (OSError, TypeError):
        return False


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_ready(
    api_client: client.ApiClient,
    namespace: str,
    selector: str,
    count: int,
    port: int | None,
    timeout: float,
    while_pid: int | None,
) -> bool:
    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout
    ready: list[str] = []
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        ready = sorted(
            f"{p.metadata.name}={p.status.pod_ip}" for p in pods if is_ready(p) and accepts(p.status.pod_ip, port)
        )
        if len(ready) >= count:
            print(f"testbed: ready pods ({selector}): {' '.join(ready)}", file=sys.stderr)
            return True
        if while_pid is not None and not process_alive(while_pid):
            print(f"testbed: process {while_pid} exited while waiting for Ready pods", file=sys.stderr)
            return False
        time.sleep(0.5)
    print(
        f"testbed: only {len(ready)} of {count} pods ({selector}) Ready after {timeout:.0f}s: {ready}", file=sys.stderr
    )
    return False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    apply = commands.add_parser("apply")
    apply.add_argument("files", nargs="+")
    wait = commands.add_parser("wait-ready")
    wait.add_argument("--namespace", required=True)
    wait.add_argument("--selector", required=True)
    wait.add_argument("--count", type=int, required=True)
    wait.add_argument("--port", type=int, help="a Ready pod must also accept connections on podIP:PORT")
    wait.add_argument("--timeout", type=float, default=120)
    wait.add_argument("--while-pid", type=int)
    args = parser.parse_args(argv)

    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    if args.command == "apply":
        apply_files(api_client, args.files)
        return 0
    return (
        0
        if wait_ready(api_client, args.namespace, args.selector, args.count, args.port, args.timeout, args.while_pid)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
