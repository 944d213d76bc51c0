#!/usr/bin/env python3
"""node_emulator.py: a kubelet stand-in for the warmbuild testbed.

There is no kubelet or container runtime here. This program plays the kubelet's part for one Node:

- registers the Node (generous capacity), keeps its Ready condition fresh and renews its Lease in
  kube-node-lease every 10 s, so the node-lifecycle controller never taints it;
- watches the pods bound to the node and, for each one, runs a REAL buildkitd
  (testbed/run-buildkitd) on its own loopback address 127.0.0.N, then writes the pod status as a
  kubelet would (Running, podIP, Ready, container statuses) through the pods/status subresource;
- restarts a buildkitd that exits (restartCount + 1, not Ready meanwhile), honours
  activeDeadlineSeconds (phase Failed, reason DeadlineExceeded);
- on deletion runs the container's preStop exec command ON THE HOST, with the container's env and a
  KUBECONFIG for the pod's service account, bounded by the grace period; then stops the buildkitd,
  frees the address and finalizes the pod (delete with grace 0 and a uid precondition).

Every container of a pod is represented by that pod's one buildkitd: image, command and probes are
not run, only read. Image and container IDs in the status are synthesized. One exception, so that
TLS is real: the buildkitd container's `--tlscert/--tlskey/--tlscacert` args are passed to the host
buildkitd, each mapped through the container's volumeMounts (subPath and subPathExpr with $(VAR)
from the container's env) to a host copy of the Secret or projected-Secret volume behind it
(`items` honoured), written under the pod's directory at each container start. A Secret that does
not exist yet keeps the container waiting (ContainerCreating), as the kubelet does.

One other kind of pod is run for real: the chart's gateway (a pod labelled
`app.kubernetes.io/component=gateway` with a container named `haproxy`). Its init containers run
to completion on the host, then testbed/run-gateway starts Debian's haproxy with the configuration
from the pod's ConfigMap volume and the `sync` container's command, on the pod's own loopback
address; every container path in the configuration and in the commands is mapped to a host copy
of the volume behind it (Secret, ConfigMap, emptyDir). Its log (HAProxy's connection lines) is the
pod directory's buildkitd.log, like any container's.

On SIGTERM/SIGINT it stops its buildkitd processes (by PID) and exits, leaving the pods as they are
(as a stopped kubelet would). Started again, it adopts the pods already bound to the node: each gets
a fresh buildkitd (restartCount + 1), on its previous address when that is free.

Usage: node_emulator.py --kubeconfig ADMIN --node NAME --state-dir DIR --first-ip 127.0.0.10 [--taint K=V:EFFECT]
One line per event goes to stderr.
"""

import argparse
import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

RUN_BUILDKITD = Path(__file__).resolve().parent / "run-buildkitd"
RUN_GATEWAY = Path(__file__).resolve().parent / "run-gateway"
INIT_TIMEOUT_SECONDS = 60
BUILDKITD_PORT = 1234
HOST_IP = "127.0.0.1"
NODE_LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT_SECONDS = 10
NODE_LEASE_SECONDS = 40
POD_RECHECK_SECONDS = 2  # how often a pod worker looks at its process and deadline unprompted
LISTEN_TIMEOUT_SECONDS = 60  # a buildkitd that does not accept connections by then has failed
STOP_TIMEOUT_SECONDS = 5  # SIGTERM, then SIGKILL after this long
SERVICE_ACCOUNT_TOKEN_SECONDS = 3600
WATCH_SECONDS = 300
FIELD_MANAGER = "warmbuild-node-emulator"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

log = logging.getLogger("node-emulator")


class Shutdown(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT (a BaseException, so `except Exception` lets it pass)."""


# ----------------------------------------------------------------------------------------- time


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(moment: datetime) -> str:
    """metav1.Time: RFC 3339, whole seconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: datetime) -> str:
    """metav1.MicroTime: RFC 3339 with exactly six fractional digits."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------- pod helpers


def pod_key(pod: dict) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def pod_dir_name(pod: dict) -> str:
    return f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"


def is_owned_by_statefulset(pod: dict) -> bool:
    return any(ref.get("kind") == "StatefulSet" for ref in pod["metadata"].get("ownerReferences") or [])


class SecretMissing(Exception):
    """A Secret a volume needs is not there (yet): the container waits, as with a real kubelet."""


TLS_FLAGS = ("--tlscert", "--tlskey", "--tlscacert")


def buildkitd_container(pod: dict) -> dict | None:
    containers = pod["spec"].get("containers") or []
    return next((c for c in containers if c.get("name") == "buildkitd"), containers[0] if containers else None)


def is_gateway_pod(pod: dict) -> bool:
    labels = pod["metadata"].get("labels") or {}
    names = {c.get("name") for c in pod["spec"].get("containers") or []}
    return labels.get("app.kubernetes.io/component") == "gateway" and "haproxy" in names


def container_named(pod: dict, name: str) -> dict:
    return next(c for c in pod["spec"].get("containers") or [] if c.get("name") == name)


def container_port(pod: dict) -> int:
    """The port readiness waits for: buildkitd's, or the gateway's first containerPort."""
    if is_gateway_pod(pod):
        for port in container_named(pod, "haproxy").get("ports") or []:
            return int(port["containerPort"])
    return BUILDKITD_PORT


def tls_flags(args: list[str]) -> list[tuple[str, str]]:
    """(flag, path) for each TLS flag, written `--flag=PATH` or `--flag PATH`."""
    found = []
    for index, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        if flag in TLS_FLAGS:
            if not value and index + 1 < len(args):
                value = args[index + 1]
            found.append((flag, value))
    return found


def mount_for(container: dict, path: str) -> tuple[dict | None, str]:
    """The volumeMount with the longest mountPath that holds `path`, and the rest of the path below it."""
    best, rest = None, ""
    for mount in container.get("volumeMounts") or []:
        root = mount["mountPath"].rstrip("/")
        if path.startswith(root + "/") and (best is None or len(root) > len(best["mountPath"].rstrip("/"))):
            best, rest = mount, path[len(root) + 1 :]
    return best, rest


def grace_period_seconds(pod: dict) -> int:
    """The grace period of a deletion: the one the delete request set, else the pod's own."""
    seconds = pod["metadata"].get("deletionGracePeriodSeconds")
    if seconds is None:
        seconds = pod["spec"].get("terminationGracePeriodSeconds", 30)
    return int(seconds)


def active_deadline_passed(pod: dict) -> bool:
    deadline = pod["spec"].get("activeDeadlineSeconds")
    started = (pod.get("status") or {}).get("startTime")
    if deadline is None or started is None:
        return False
    return utc_now() >= parse_time(started) + timedelta(seconds=int(deadline))


def synthesized_id(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def tcp_accepts(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- loopback address


class LoopbackAddresses:
    """127.0.0.N from --first-ip upward; the lowest free one first, freed ones reused."""

    def __init__(self, first_ip: str):
        self.first = ipaddress.IPv4Address(first_ip)
        if not self.first.is_loopback:
            raise SystemExit(f"--first-ip {first_ip} is not a loopback address")
        self.in_use: set[str] = set()
        self.lock = threading.Lock()

    def allocate(self, preferred: str | None = None, avoid: set[str] = frozenset()) -> str:
        """`preferred` (the pod's address before an emulator restart) if free, else the lowest free one
        that no other pod's status still names (`avoid`), so adopted pods keep their addresses."""
        with self.lock:
            candidates = [preferred] if preferred and self._in_range(preferred) else []
            candidates += [ip for ip in self._range() if ip not in avoid]
            for ip in candidates:
                # Something else (a buildkitd left over by a killed emulator) may still listen there.
                if ip not in self.in_use and not tcp_accepts(ip, BUILDKITD_PORT):
                    self.in_use.add(ip)
                    return ip
        raise RuntimeError("no free loopback address left")

    def release(self, ip: str | None) -> None:
        with self.lock:
            self.in_use.discard(ip)

    def _range(self) -> list[str]:
        last = min(int(self.first) + 250, int(ipaddress.IPv4Address("127.255.255.254")))
        return [str(ipaddress.IPv4Address(n)) for n in range(int(self.first), last + 1)]

    def _in_range(self, ip: str) -> bool:
        return ip in self._range()


# ------------------------------------------------------------------------------ buildkitd runs


class Buildkitd:
    """One running buildkitd: the emulated container of one pod."""

    def __init__(self, process: subprocess.Popen, ip: str, started_at: datetime, container_id: str):
        self.process = process
        self.ip = ip
        self.started_at = started_at
        self.container_id = container_id

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while it runs; a signal is reported as 128 + its number, as the kubelet does."""
        code = self.process.poll()
        return 128 - code if code is not None and code < 0 else code


def signal_process_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def wait_or_kill(process: subprocess.Popen, seconds: float) -> None:
    """Wait for `process` to exit; SIGKILL its process group after `seconds`."""
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        signal_process_group(process, signal.SIGKILL)
        process.wait()


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group led by `process`, SIGKILL it after STOP_TIMEOUT_SECONDS."""
    signal_process_group(process, signal.SIGTERM)
    wait_or_kill(process, STOP_TIMEOUT_SECONDS)


def kill_leftover_buildkitd(pid_file: Path) -> None:
    """A buildkitd recorded by an emulator that was killed without cleaning up: stop it by PID."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return
    if "buildkitd" in cmdline and f"{pid_file.parent}/" in cmdline:
        log.info("stopping leftover buildkitd pid %d of %s", pid, pid_file.parent.name)
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(STOP_TIMEOUT_SECONDS * 10):
                time.sleep(0.1)
                os.kill(pid, 0)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------------ emulator


class NodeEmulator:
    def __init__(
        self, api_client: client.ApiClient, node: str, state_dir: Path, first_ip: str, taints: list[dict] = ()
    ):
        self.taints = list(taints)
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.node = node
        self.state_dir = state_dir
        self.addresses = LoopbackAddresses(first_ip)
        self.started_at = utc_now()
        self.kubelet_version = client.VersionApi(api_client).get_code().git_version
        self.node_uid: str | None = None
        self.stopping = threading.Event()
        self.workers: dict[str, PodWorker] = {}  # by pod uid
        self.finished_uids: set[str] = set()
        self.workers_lock = threading.Lock()
        self.processes: dict[int, subprocess.Popen] = {}
        self.processes_lock = threading.Lock()

    # ---- node

    def register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "warmbuild.dev/node-emulator": "true",
                },
            },
            "spec": {"taints": self.taints} if self.taints else {},
        }
        try:
            self.node_uid = self.core.create_node(node).metadata.uid
            log.info("registered node %s", self.node)
        except ApiException as error:
            if error.status != 409:
                raise
            self.node_uid = self.core.read_node(self.node).metadata.uid
            log.info("node %s already registered", self.node)
        self.report_node_status()
        self.renew_node_lease()

    def report_node_status(self) -> None:
        """Capacity, addresses, node info and the four conditions with a fresh heartbeat."""
        now = format_time(utc_now())
        since = format_time(self.started_at)

        def condition(kind: str, status: str, reason: str, message: str) -> dict:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": since,
            }

        resources = {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
        status = {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition(
                    "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"
                ),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "warmbuild node emulator is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node}],
            "nodeInfo": {
                "machineID": synthesized_id("machine", self.node)[:32],
                "systemUUID": synthesized_id("system", self.node)[:32],
                "bootID": synthesized_id("boot", self.node, self.started_at.isoformat())[:32],
                "kernelVersion": os.uname().release,
                "osImage": "warmbuild testbed",
                "containerRuntimeVersion": "warmbuild-emulator://buildkitd",
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.core.patch_node_status(self.node, {"status": status})

    def renew_node_lease(self) -> None:
        """Create or renew kube-node-lease/NODE (server-side apply), owned by the Node like the kubelet's."""
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node,
                "namespace": NODE_LEASE_NAMESPACE,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self.node_uid}],
            },
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": NODE_LEASE_SECONDS,
                "renewTime": format_micro_time(utc_now()),
            },
        }
        self.coordination.patch_namespaced_lease(
            self.node,
            NODE_LEASE_NAMESPACE,
            lease,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
        )

    def keep_node_ready(self) -> None:
        """Heartbeat thread: lease and Ready condition every HEARTBEAT_SECONDS; re-register a deleted node."""
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.renew_node_lease()
                self.report_node_status()
            except ApiException as error:
                if error.status == 404:
                    log.info("node %s is gone from the API; registering it again", self.node)
                    self.safely(self.register_node)
                else:
                    log.warning("node heartbeat failed: HTTP %s %s", error.status, error.reason)
            except Exception as error:  # the API server may be restarting
                log.warning("node heartbeat failed: %s", error)

    def safely(self, action) -> None:
        try:
            action()
        except Exception as error:
            log.warning("%s failed: %s", action.__name__, error)

    # ---- pod watch

    def watch_pods(self) -> None:
        """List the pods bound to this node, then watch from there; list again on any error or 410."""
        selector = f"spec.nodeName={self.node}"
        while not self.stopping.is_set():
            try:
                response = self.core.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False)
                pod_list = json.loads(response.data)
                self.sync_pod_list(pod_list["items"])
                resource_version = pod_list["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=WATCH_SECONDS + 30,
                    deserialize=False,
                )
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.pod_changed(event["object"])
                    elif event["type"] == "DELETED":
                        self.pod_gone(event["object"]["metadata"]["uid"])
            except ApiException as error:
                if error.status == 410:
                    log.info("pod watch expired (410); listing again")
                else:
                    log.warning("pod watch failed: HTTP %s %s; listing again in 2 s", error.status, error.reason)
                    time.sleep(2)
            except Exception as error:
                log.warning("pod watch failed: %s; listing again in 2 s", error)
                time.sleep(2)

    def sync_pod_list(self, pods: list[dict]) -> None:
        """After a (re-)list: every listed pod gets its worker, then workers of unlisted pods learn they are gone.
        All new workers exist before any starts, so each sees the addresses the others' pods hold."""
        listed = {pod["metadata"]["uid"] for pod in pods}
        new_workers = [worker for worker in (self.pod_changed(pod, start=False) for pod in pods) if worker]
        for worker in new_workers:
            worker.start()
        with self.workers_lock:
            vanished = [uid for uid in self.workers if uid not in listed]
        for uid in vanished:
            self.pod_gone(uid)

    def pod_changed(self, pod: dict, start: bool = True) -> "PodWorker | None":
        """Hand the newest pod object to its worker; returns the worker when it is a new one."""
        uid = pod["metadata"]["uid"]
        new = None
        with self.workers_lock:
            if uid in self.finished_uids:
                return None
            worker = self.workers.get(uid)
            if worker is None:
                worker = new = PodWorker(self, pod)
                self.workers[uid] = worker
        worker.update(pod)
        if new is not None and start:
            new.start()
        return new

    def addresses_of_other_pods(self, uid: str) -> set[str]:
        """podIPs that the API still records for the other pods on this node."""
        with self.workers_lock:
            pods = [worker.latest for other, worker in self.workers.items() if other != uid]
        return {(pod.get("status") or {}).get("podIP") for pod in pods if pod} - {None}

    def pod_gone(self, uid: str) -> None:
        with self.workers_lock:
            worker = self.workers.get(uid)
        if worker is not None:
            worker.update(None)

    def worker_finished(self, uid: str) -> None:
        with self.workers_lock:
            self.workers.pop(uid, None)
            self.finished_uids.add(uid)

    # ---- processes

    def start_buildkitd(
        self, pod: dict, ip: str, extra_args: list[str] = (), argv: list[str] | None = None, env: dict | None = None
    ) -> Buildkitd:
        """The pod's process: a buildkitd, or `argv` (the gateway) with `env`."""
        pod_dir = self.state_dir / "pods" / pod_dir_name(pod)
        pod_dir.mkdir(parents=True, exist_ok=True)
        pid_file = pod_dir / "buildkitd.pid"
        kill_leftover_buildkitd(pid_file)
        with self.processes_lock:
            if self.stopping.is_set():
                raise Shutdown("stopping")
            with open(pod_dir / "buildkitd.log", "ab") as log_file:
                process = subprocess.Popen(
                    argv or [str(RUN_BUILDKITD), ip, str(pod_dir), *extra_args],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                )
            self.processes[process.pid] = process
        pid_file.write_text(str(process.pid))
        container_id = synthesized_id(pod["metadata"]["uid"], str(process.pid), str(time.time()))
        return Buildkitd(process, ip, utc_now(), container_id)

    def stop_buildkitd(self, buildkitd: Buildkitd) -> int:
        stop_process_group(buildkitd.process)
        self.untrack(buildkitd.process)
        return buildkitd.exit_code()

    def forget_exited(self, buildkitd: Buildkitd) -> None:
        self.untrack(buildkitd.process)

    def track(self, process: subprocess.Popen) -> None:
        """Processes stopped at shutdown: buildkitds and running preStop commands."""
        with self.processes_lock:
            if self.stopping.is_set():
                signal_process_group(process, signal.SIGKILL)
                raise Shutdown("stopping")
            self.processes[process.pid] = process

    def untrack(self, process: subprocess.Popen) -> None:
        with self.processes_lock:
            self.processes.pop(process.pid, None)

    def stop_all_buildkitds(self) -> None:
        """Shutdown: SIGTERM every buildkitd at once, SIGKILL those still there after STOP_TIMEOUT_SECONDS."""
        with self.processes_lock:
            self.stopping.set()
            processes = list(self.processes.values())
            self.processes.clear()
        for process in processes:
            signal_process_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS  # one grace period for all, not one each
        for process in processes:
            wait_or_kill(process, max(0.1, deadline - time.monotonic()))
            what = {str(RUN_BUILDKITD): "buildkitd", str(RUN_GATEWAY): "gateway"}.get(process.args[0], "preStop")
            log.info("stopped %s pid %d", what, process.pid)

    # ---- API writes for pods

    def write_pod_status(self, pod: dict, status: dict) -> None:
        """Replace the kubelet-owned parts of the status (JSON merge patch on pods/status)."""
        if self.stopping.is_set():
            raise Shutdown("stopping")  # a stopped kubelet leaves the pods as they are
        self.core.patch_namespaced_pod_status(
            pod["metadata"]["name"], pod["metadata"]["namespace"], {"status": status}, _content_type=MERGE_PATCH
        )

    def finalize_pod(self, pod: dict) -> None:
        """The kubelet's last word: delete now, but only this incarnation of the pod."""
        try:
            self.core.delete_namespaced_pod(
                pod["metadata"]["name"],
                pod["metadata"]["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}},
            )
        except ApiException as error:
            if error.status not in (404, 409):  # gone already, or a new pod of the same name
                raise

    def write_service_account_kubeconfig(self, pod: dict, path: Path) -> None:
        """A kubeconfig for the pod's service account, with a TokenRequest token bound to the pod."""
        namespace = pod["metadata"]["namespace"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": SERVICE_ACCOUNT_TOKEN_SECONDS,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                },
            },
        }
        response = self.core.create_namespaced_service_account_token(
            account, namespace, request, _preload_content=False
        )
        token = json.loads(response.data)["status"]["token"]
        configuration = self.api_client.configuration
        cluster = {"server": configuration.host}
        if configuration.ssl_ca_cert:
            cluster["certificate-authority-data"] = base64.b64encode(
                Path(configuration.ssl_ca_cert).read_bytes()
            ).decode()
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": account, "namespace": namespace}}],
            "current-context": "pod",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(kubeconfig))


# ---------------------------------------------------------------------------------- pod worker


class PodWorker(threading.Thread):
    """Everything the node does for one pod (one uid), in its own thread, like the kubelet's pod workers.

    The watch hands it the newest pod object; it acts on that, and looks again every
    POD_RECHECK_SECONDS for an exited process or a passed deadline.
    """

    def __init__(self, emulator: NodeEmulator, pod: dict):
        super().__init__(name=f"pod {pod_key(pod)}", daemon=True)
        self.emulator = emulator
        self.uid = pod["metadata"]["uid"]
        self.key = pod_key(pod)
        self.pod_dir = emulator.state_dir / "pods" / pod_dir_name(pod)
        self.owned_by_statefulset = is_owned_by_statefulset(pod)
        self.port = container_port(pod)
        self.latest: dict | None = pod
        self.changed = threading.Event()
        self.buildkitd: Buildkitd | None = None
        self.ip: str | None = None
        # A pod already running when we first see it is adopted: its container "restarts" here.
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        self.restart_count = max((s.get("restartCount", 0) for s in statuses), default=0)
        self.adopted = (pod.get("status") or {}).get("phase") == "Running"
        self.last_termination: dict | None = None
        self.not_before = 0.0  # crash-loop back-off: no new start before this monotonic time
        self.quick_exits = 0
        self.finished = False  # the container ended for good (restartPolicy, deadline)
        self.empty_dirs: set[str] = set()  # the gateway pod's emptyDir volumes (volume_dir)

    def update(self, pod: dict | None) -> None:
        self.latest = pod
        self.changed.set()

    def run(self) -> None:
        while not self.emulator.stopping.is_set():
            try:
                if self.sync(self.latest):
                    self.emulator.worker_finished(self.uid)
                    return
            except Shutdown:
                return
            except ApiException as error:
                log.warning(
                    "%s: API error HTTP %s %s: %s",
                    self.key,
                    error.status,
                    error.reason,
                    " ".join(str(error.body or "").split())[:300],
                )
            except Exception as error:
                log.exception("%s: %s", self.key, error)
            self.changed.wait(POD_RECHECK_SECONDS)
            self.changed.clear()

    # ---- the decision, taken again on every change and every few seconds

    def sync(self, pod: dict | None) -> bool:
        """Bring the node in line with the pod. True when this pod is done with for good."""
        if pod is None:
            self.stop_container("the pod was removed from the API")
            self.cleanup(keep_cache=self.owned_by_statefulset)
            return True
        if pod["metadata"].get("deletionTimestamp"):
            self.terminate_pod(pod)
            return True
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            self.stop_container(f"the pod is {phase}")
            return False
        if active_deadline_passed(pod):
            self.fail_pod_for_deadline(pod)
            return False
        if self.finished:
            return False
        if self.buildkitd is not None:
            exit_code = self.buildkitd.exit_code()
            if exit_code is None:
                return False
            self.container_exited(pod, exit_code)
        if self.buildkitd is None and not self.finished and time.monotonic() >= self.not_before:
            self.start_container(pod)
        return False

    # ---- starting

    def start_container(self, pod: dict) -> None:
        previous_ip = (pod.get("status") or {}).get("podIP")
        if self.adopted:
            self.restart_count += 1
            self.adopted = False
            log.info("%s: adopting the running pod; starting a fresh buildkitd", self.key)
        if self.ip is None:
            self.ip = self.emulator.addresses.allocate(
                preferred=previous_ip, avoid=self.emulator.addresses_of_other_pods(self.uid)
            )
        self.emulator.write_pod_status(pod, self.pod_status(pod, waiting_reason="ContainerCreating"))
        try:
            if is_gateway_pod(pod):
                argv, env = self.gateway_process(pod)
                self.buildkitd = self.emulator.start_buildkitd(pod, self.ip, argv=argv, env=env)
            else:
                extra_args = self.tls_args(pod)
                self.buildkitd = self.emulator.start_buildkitd(pod, self.ip, extra_args)
        except SecretMissing as missing:
            log.info("%s: waiting for Secret %s (a volume's source)", self.key, missing)
            self.not_before = time.monotonic() + 1
            return
        log.info("%s: started pid %d on %s:%d", self.key, self.buildkitd.pid, self.ip, self.port)
        if not self.wait_until_listening():
            return
        self.emulator.write_pod_status(pod, self.pod_status(pod))
        log.info(
            "%s: Ready at %s (buildkitd listening %.1fs after start)",
            self.key,
            self.ip,
            (utc_now() - self.buildkitd.started_at).total_seconds(),
        )

    def wait_until_listening(self) -> bool:
        deadline = time.monotonic() + LISTEN_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.buildkitd.exit_code() is not None:
                return False  # the next sync records the exit
            if tcp_accepts(self.buildkitd.ip, self.port):
                return True
            time.sleep(0.1)
        log.warning(
            "%s: buildkitd did not listen on %s:%d within %ds; stopping it",
            self.key,
            self.buildkitd.ip,
            self.port,
            LISTEN_TIMEOUT_SECONDS,
        )
        self.emulator.stop_buildkitd(self.buildkitd)
        return False

    def last_log_line(self) -> str:
        try:
            lines = (self.pod_dir / "buildkitd.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1][:300] if lines else "(empty log)"

    # ---- TLS: the buildkitd container's certificate args, mapped to host copies of its volumes

    def tls_args(self, pod: dict) -> list[str]:
        """`--tlscert/--tlskey/--tlscacert` of the buildkitd container with host paths; [] without TLS."""
        container = buildkitd_container(pod)
        if container is None:
            return []
        env = self.container_env(pod, container)
        args, wanted = [], tls_flags(container.get("args") or [])
        volumes_dir = self.pod_dir / "volumes"
        written: set[str] = set()
        for flag, path in wanted:
            mount, rest = mount_for(container, expand_env_references(path, env))
            if mount is None:
                raise RuntimeError(f"{flag} {path}: no volumeMount covers it")
            volume = next(v for v in pod["spec"].get("volumes") or [] if v["name"] == mount["name"])
            if volume["name"] not in written:
                self.write_secret_volume(pod, volume, volumes_dir / volume["name"])
                written.add(volume["name"])
            sub = expand_env_references(mount.get("subPathExpr") or mount.get("subPath") or "", env)
            host = volumes_dir / volume["name"] / sub / rest
            if not host.is_file():
                raise RuntimeError(f"{flag} {path}: {host} is not in the volume")
            args.append(f"{flag}={host}")
        return args

    # ---- the gateway pod: HAProxy and its sync sidecar, every container path mapped to the host

    def volume_dir(self, name: str) -> Path:
        """Where a volume lives on the host. emptyDirs under a short path: HAProxy takes unix socket
        paths of at most 97 bytes, and the sockets of the gateway pod live in one."""
        if name in self.empty_dirs:
            return Path("/tmp") / f"wb-{self.uid[:8]}" / name
        return self.pod_dir / "volumes" / name

    def gateway_process(self, pod: dict) -> tuple[list[str], dict[str, str]]:
        """(argv, env) of testbed/run-gateway for this pod, after its init containers ran."""
        self.empty_dirs = {v["name"] for v in pod["spec"].get("volumes") or [] if "emptyDir" in v}
        for volume in pod["spec"].get("volumes") or []:
            self.write_volume(pod, volume, self.volume_dir(volume["name"]))
        kubeconfig = self.pod_dir / "kubeconfig"
        self.emulator.write_service_account_kubeconfig(pod, kubeconfig)
        for init in pod["spec"].get("initContainers") or []:
            argv, env = self.host_command(pod, init, kubeconfig)
            log.info("%s: init container %s: %s", self.key, init["name"], argv)
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=INIT_TIMEOUT_SECONDS)
            if done.returncode != 0:
                raise RuntimeError(f"init container {init['name']} exited {done.returncode}: {done.stderr[-500:]}")
        proxy = container_named(pod, "haproxy")
        args = list(proxy.get("args") or [])
        config = self.host_path(proxy, args[args.index("-f") + 1])
        text = config.read_text()
        for mount in sorted(proxy.get("volumeMounts") or [], key=lambda m: -len(m["mountPath"])):  # longest first
            text = text.replace(mount["mountPath"].rstrip("/"), str(self.volume_dir(mount["name"])))
        host_config = self.pod_dir / "haproxy.cfg"
        host_config.write_text(text)
        sync_argv, env = self.host_command(pod, container_named(pod, "sync"), kubeconfig)
        env.update(self.container_env(pod, proxy))  # one process group: both containers' variables
        return [str(RUN_GATEWAY), str(host_config), "--", *sync_argv], env

    def host_command(self, pod: dict, container: dict, kubeconfig: Path) -> tuple[list[str], dict[str, str]]:
        """A container's command + args with $(VAR)s expanded and container paths mapped to the host."""
        container_env = self.container_env(pod, container)
        argv = [expand_env_references(part, container_env) for part in (container.get("command") or [])]
        argv += [expand_env_references(part, container_env) for part in (container.get("args") or [])]
        mounts = sorted(container.get("volumeMounts") or [], key=lambda m: -len(m["mountPath"]))
        mapped = []
        for part in argv:
            for mount in mounts:
                root = mount["mountPath"].rstrip("/")
                if root in part:
                    part = part.replace(root, str(self.volume_dir(mount["name"])))
                    break
            mapped.append(part)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("WARMBUILD_K8S_")}
        env.update(container_env)
        env["KUBECONFIG"] = str(kubeconfig)  # the pod's service account, as in the pod
        return mapped, env

    def host_path(self, container: dict, path: str) -> Path:
        mount, rest = mount_for(container, path)
        if mount is None:
            raise RuntimeError(f"{path}: no volumeMount covers it")
        return self.volume_dir(mount["name"]) / rest

    def write_volume(self, pod: dict, volume: dict, directory: Path) -> None:
        """Secret and projected-Secret volumes as below; a ConfigMap's keys as files; an emptyDir empty."""
        if "configMap" in volume:
            config_map = self.emulator.core.read_namespaced_config_map(
                volume["configMap"]["name"], pod["metadata"]["namespace"]
            )
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True, mode=0o755)
            for key, value in (config_map.data or {}).items():
                (directory / key).write_text(value)
        elif "emptyDir" in volume:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True, mode=0o700)
        else:
            self.write_secret_volume(pod, volume, directory)

    def write_secret_volume(self, pod: dict, volume: dict, directory: Path) -> None:
        """A host copy of a secret (or projected secrets) volume, as the kubelet lays it out."""
        if "secret" in volume:
            sources = [(volume["secret"].get("secretName"), volume["secret"].get("items"))]
        elif "projected" in volume:
            sources = [
                (source["secret"].get("name"), source["secret"].get("items"))
                for source in volume["projected"].get("sources") or []
                if "secret" in source
            ]
        else:
            raise RuntimeError(f"volume {volume['name']}: only secret and projected-secret volumes are emulated")
        files: dict[str, bytes] = {}
        for name, items in sources:
            try:
                secret = self.emulator.core.read_namespaced_secret(name, pod["metadata"]["namespace"])
            except ApiException as error:
                if error.status == 404:
                    raise SecretMissing(name) from None
                raise
            data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
            if items:
                for item in items:
                    if item["key"] not in data:
                        raise SecretMissing(f"{name} (key {item['key']})")
                    files[item["path"]] = data[item["key"]]
            else:
                files.update(data)
        shutil.rmtree(directory, ignore_errors=True)
        for relative, content in files.items():
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            target.write_bytes(content)
            target.chmod(0o600)

    # ---- a process that ended by itself

    def container_exited(self, pod: dict, exit_code: int) -> None:
        buildkitd, self.buildkitd = self.buildkitd, None
        self.emulator.forget_exited(buildkitd)
        self.last_termination = self.terminated_state(buildkitd, exit_code)
        ran_for = (utc_now() - buildkitd.started_at).total_seconds()
        self.quick_exits = self.quick_exits + 1 if ran_for < 60 else 0
        policy = pod["spec"].get("restartPolicy", "Always")
        restarts = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
        log.info(
            "%s: buildkitd pid %d exited with %d after %.0fs%s%s",
            self.key,
            buildkitd.pid,
            exit_code,
            ran_for,
            "; restarting it" if restarts else "",
            f"; its last line: {self.last_log_line()}" if exit_code else "",
        )
        if restarts:
            self.restart_count += 1
            backoff = min(5 * (self.quick_exits - 1), 30) if self.quick_exits > 1 else 0
            self.not_before = time.monotonic() + backoff
            self.emulator.write_pod_status(
                pod, self.pod_status(pod, waiting_reason="CrashLoopBackOff" if backoff else "ContainerCreating")
            )
        else:
            self.finished = True
            phase = "Succeeded" if exit_code == 0 else "Failed"
            self.emulator.write_pod_status(pod, self.pod_status(pod, phase=phase, terminated=self.last_termination))
            self.release_ip()

    # ---- deadline

    def fail_pod_for_deadline(self, pod: dict) -> None:
        log.info("%s: activeDeadlineSeconds passed; stopping it and marking it Failed", self.key)
        terminated = None
        if self.buildkitd is not None:
            buildkitd = self.buildkitd
            exit_code = self.stop_container("DeadlineExceeded")
            terminated = self.terminated_state(buildkitd, exit_code, reason="DeadlineExceeded")
        self.finished = True
        status = self.pod_status(pod, phase="Failed", terminated=terminated or self.last_termination)
        status["reason"] = "DeadlineExceeded"
        status["message"] = "Pod was active on the node longer than the specified deadline"
        self.emulator.write_pod_status(pod, status)

    # ---- deletion

    def terminate_pod(self, pod: dict) -> None:
        """preStop (bounded by the grace period), stop buildkitd, free the address, finalize."""
        grace = grace_period_seconds(pod)
        log.info("%s: deletion requested (grace %ds)", self.key, grace)
        if grace > 0 and self.buildkitd is not None and self.buildkitd.exit_code() is None:
            self.run_pre_stop(pod, timeout=grace)
        self.stop_container("the pod was deleted")
        self.emulator.finalize_pod(pod)
        log.info("%s: finalized (deleted with grace 0)", self.key)
        self.cleanup(keep_cache=self.owned_by_statefulset)

    def run_pre_stop(self, pod: dict, timeout: int) -> None:
        container = pod["spec"]["containers"][0]
        command = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
        if not command:
            return
        kubeconfig = self.pod_dir / "kubeconfig"
        try:
            self.emulator.write_service_account_kubeconfig(pod, kubeconfig)
        except ApiException as error:
            if error.status == 404:  # the pod (or its service account) is gone already: no hook to run
                log.info("%s: not running preStop: %s", self.key, error.reason)
                return
            raise
        container_env = self.container_env(pod, container)
        env = {name: value for name, value in os.environ.items() if name != "KUBECONFIG"}
        env.update(container_env)
        env["KUBECONFIG"] = str(kubeconfig)
        command = [expand_env_references(part, container_env) for part in command]
        log.info("%s: running preStop %s (at most %ds)", self.key, command, timeout)
        started = time.monotonic()
        with open(self.pod_dir / "prestop.log", "ab") as output:
            try:
                process = subprocess.Popen(
                    command,
                    env=env,
                    cwd=self.pod_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                log.warning("%s: preStop could not start: %s", self.key, error)
                return
            self.emulator.track(process)
            try:
                code = process.wait(timeout)
                log.info("%s: preStop exited with %d after %.1fs", self.key, code, time.monotonic() - started)
            except subprocess.TimeoutExpired:
                log.warning("%s: preStop still running after the %ds grace period; killing it", self.key, timeout)
                signal_process_group(process, signal.SIGKILL)
                process.wait()
            finally:
                self.emulator.untrack(process)

    def container_env(self, pod: dict, container: dict) -> dict[str, str]:
        """The container's env: plain values and the common downward-API fieldRefs."""
        fields = {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
            "metadata.uid": pod["metadata"]["uid"],
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": self.ip or (pod.get("status") or {}).get("podIP", ""),
            "status.hostIP": HOST_IP,
        }
        env: dict[str, str] = {}
        for variable in container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = expand_env_references(variable["value"], env)
            elif "fieldRef" in (variable.get("valueFrom") or {}):
                path = variable["valueFrom"]["fieldRef"]["fieldPath"]
                if path in fields:
                    env[variable["name"]] = fields[path]
                else:
                    log.warning("%s: env %s: fieldRef %s is not emulated", self.key, variable["name"], path)
            else:
                log.warning("%s: env %s: only plain values and fieldRefs are emulated", self.key, variable["name"])
        return env

    # ---- stopping and cleaning up

    def stop_container(self, why: str) -> int | None:
        if self.buildkitd is None:
            self.release_ip()
            return None
        buildkitd, self.buildkitd = self.buildkitd, None
        exit_code = self.emulator.stop_buildkitd(buildkitd)
        log.info("%s: stopped buildkitd pid %d (%s)", self.key, buildkitd.pid, why)
        self.release_ip()
        return exit_code

    def release_ip(self) -> None:
        if self.ip is not None:
            self.emulator.addresses.release(self.ip)
            self.ip = None

    def cleanup(self, keep_cache: bool = False) -> None:
        """A StatefulSet pod keeps its buildkitd root (its "volume") for the next pod of that name."""
        (self.pod_dir / "kubeconfig").unlink(missing_ok=True)
        shutil.rmtree(self.pod_dir / "volumes", ignore_errors=True)  # Secrets never outlive the pod
        shutil.rmtree(Path("/tmp") / f"wb-{self.uid[:8]}", ignore_errors=True)  # emptyDirs (volume_dir)
        if not keep_cache:
            shutil.rmtree(self.pod_dir, ignore_errors=True)

    # ---- status as the kubelet writes it

    def terminated_state(self, buildkitd: Buildkitd, exit_code: int, reason: str | None = None) -> dict:
        return {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": format_time(buildkitd.started_at),
            "finishedAt": format_time(utc_now()),
            "containerID": f"containerd://{buildkitd.container_id}",
        }

    def pod_status(
        self, pod: dict, waiting_reason: str | None = None, phase: str | None = None, terminated: dict | None = None
    ) -> dict:
        """The full kubelet-owned status. Ready when buildkitd runs and nothing is waiting or terminated."""
        old = pod.get("status") or {}
        running = self.buildkitd is not None and waiting_reason is None and terminated is None
        if phase is None:
            phase = "Running" if running or old.get("phase") == "Running" or self.restart_count else "Pending"
        now = format_time(utc_now())
        old_conditions = {c["type"]: c for c in old.get("conditions") or []}

        def condition(kind: str, true: bool) -> dict:
            status = "True" if true else "False"
            previous = old_conditions.get(kind)
            since = (
                previous["lastTransitionTime"]
                if previous and previous.get("status") == status and previous.get("lastTransitionTime")
                else now
            )
            return {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}

        if running:
            state = {"running": {"startedAt": format_time(self.buildkitd.started_at)}}
        elif terminated is not None:
            state = {"terminated": terminated}
        else:
            state = {"waiting": {"reason": waiting_reason or "ContainerCreating"}}
        container_statuses = []
        for container in pod["spec"]["containers"]:
            image = container["image"]
            entry = {
                "name": container["name"],
                "image": image,
                "imageID": f"{image.split(':')[0]}@sha256:{synthesized_id('image', image)}",
                "ready": running,
                "started": running,
                "restartCount": self.restart_count,
                "state": state,
            }
            if self.buildkitd is not None:
                entry["containerID"] = f"containerd://{self.buildkitd.container_id}"
            elif terminated is not None:
                entry["containerID"] = terminated["containerID"]
            if self.last_termination is not None:
                entry["lastState"] = {"terminated": self.last_termination}
            container_statuses.append(entry)

        ip = self.ip or old.get("podIP")
        status = {
            "phase": phase,
            "reason": None,
            "message": None,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "startTime": old.get("startTime") or now,
            "conditions": [
                condition("PodReadyToStartContainers", phase in ("Pending", "Running")),
                condition("Initialized", True),
                condition("ContainersReady", running),
                condition("Ready", running),
                condition("PodScheduled", True),
            ],
            "containerStatuses": container_statuses,
        }
        if ip:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        return status


_ENV_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_env_references(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and env values: unknown references stay, $$ is a $."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _ENV_REFERENCE.sub(replace, text)


# ---------------------------------------------------------------------------------------- main


def make_api_client(kubeconfig: str) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = 32  # one connection per pod worker, the watch and the heartbeat
    return client.ApiClient(configuration)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="admin kubeconfig")
    parser.add_argument("--node", required=True, help="the Node's name")
    parser.add_argument("--state-dir", required=True, type=Path, help="pods/<namespace>_<name>/ go here")
    parser.add_argument("--first-ip", default="127.0.0.10", help="pods get 127.0.0.N from this one upward")
    parser.add_argument(
        "--taint", action="append", default=[], help="KEY=VALUE:EFFECT on the Node (a node only some pods tolerate)"
    )
    return parser.parse_args(argv)


def parse_taint(text: str) -> dict:
    key_value, _, effect = text.rpartition(":")
    key, _, value = key_value.partition("=")
    if not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise SystemExit(f"--taint {text}: write KEY=VALUE:EFFECT")
    return {"key": key, "value": value, "effect": effect}


def request_shutdown(signum, _frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Shutdown(signal.Signals(signum).name)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s node-emulator: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, request_shutdown)
    signal.signal(signal.SIGINT, request_shutdown)
    (args.state_dir / "pods").mkdir(parents=True, exist_ok=True)
    emulator = None
    try:
        emulator = NodeEmulator(
            make_api_client(args.kubeconfig),
            args.node,
            args.state_dir,
            args.first_ip,
            [parse_taint(taint) for taint in args.taint],
        )
        emulator.register_node()
        threading.Thread(target=emulator.keep_node_ready, name="heartbeat", daemon=True).start()
        log.info("node %s Ready; pods get addresses from %s", args.node, args.first_ip)
        emulator.watch_pods()
    except Shutdown as reason:
        log.info("got %s; stopping buildkitd processes", reason)
    finally:
        if emulator is not None:
            emulator.stop_all_buildkitds()
    log.info("exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
