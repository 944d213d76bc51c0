"""`warmbuild gateway-sync`: keeps HAProxy's map of builder names to pod addresses current.

The gateway routes a connection for `B.<domain>` to builder B's pod. Pods come and go (a rollout, an
ephemeral builder per build), so the address cannot be in HAProxy's static configuration. This
sidecar watches the pool and writes one HAProxy map (`builders.map`), one line per builder:

    <builder>.<domain>  <pod IP>|<port>|<the name the builder's certificate carries>

- warm builders: from `pool.watch.PoolWatch`, so membership is verified as the scheduler verifies
  it (a pod counts only if the pool's StatefulSet controls it, by uid), usable ones only; the name
  is the pod's stable DNS name;
- ephemeral builders of the pool (label `warmbuild.dev/ephemeral-for=<pool>`), Ready: their
  certificate names the pod.

The map is what a connection is checked against, not what grants it: a name reaches the map only
if it is a builder, a connection reaches a builder only with a grant certificate naming it, and
the gateway verifies the builder's own certificate for the name in the map.

Decision: HAProxy's runtime API (an admin socket shared with the proxy's container) over a reload:
the new map replaces the old atomically (`prepare map` / `add map @version` / `commit map`), no
connection is cut, and each change takes effect within a watch event. The file is written too
(atomically) so that a restarted proxy starts from the current map. DNS was the other choice:
only StatefulSet pods have stable names, and ephemeral builders have none.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..kube.client import KubeClient
from ..kube.names import EPHEMERAL_POOL_LABEL, pods_path
from ..kube.views import PodView, pod_view
from ..pool.membership import Builder
from ..pool.watch import PoolWatch
from .names import DEFAULT_DOMAIN, gateway_server_name

RESYNC_SECONDS = 30.0  # the whole map is pushed again this often, whatever happened
RETRY_SECONDS = 1.0  # a failed push is tried again after this long
WAKE_SECONDS = 0.25  # how soon an ephemeral builder's change is seen (the pool's own changes wake at once)
SOCKET_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class SyncOptions:
    namespace: str
    pool: str
    map_file: Path
    runtime_socket: str | None = None
    domain: str = DEFAULT_DOMAIN


def map_entries(
    builders: Iterable[Builder], ephemeral: Iterable[PodView], domain: str = DEFAULT_DOMAIN
) -> dict[str, str]:
    """Map key → value for the usable warm builders (with a stable name) and the Ready ephemeral ones."""
    entries: dict[str, str] = {}
    for builder in builders:
        host, _, port = builder.address.removeprefix("tcp://").rpartition(":")
        if builder.server_name and host and port:
            _add(entries, builder.name, host, port, builder.server_name, domain)
    for view in ephemeral:
        if view.usable:
            _add(entries, view.name, view.ip or "", str(view.port), view.name, domain)
    return entries


def _add(entries: dict[str, str], name: str, ip: str, port: str, server_name: str, domain: str) -> None:
    try:
        key = gateway_server_name(name, domain)
    except ValueError:
        return  # not one DNS label: never routable, never granted through the gateway
    entries[key] = f"{ip}|{port}|{server_name}"


def render_map(entries: dict[str, str]) -> str:
    return "".join(f"{key} {value}\n" for key, value in sorted(entries.items()))


def write_map(path: Path, entries: dict[str, str]) -> None:
    """Atomically: a proxy (re)starting reads a whole map, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(render_map(entries))
    os.chmod(tmp, 0o644)  # the proxy's user reads it
    os.replace(tmp, path)


def runtime_command(socket_path: str, command: str) -> str:
    """One command line on HAProxy's admin socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SOCKET_TIMEOUT_SECONDS)
        sock.connect(socket_path)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def push_map(socket_path: str, map_file: Path, entries: dict[str, str]) -> None:
    """Replace the running proxy's map atomically; OSError/RuntimeError if it did not take it."""
    answer = runtime_command(socket_path, f"prepare map {map_file}")
    words = answer.split()
    if "version" not in answer.lower() or not words or not words[-1].isdigit():
        raise RuntimeError(f"prepare map: {answer.strip() or 'no answer'}")
    version = words[-1]
    commands = [f"add map @{version} {map_file} {key} {value}" for key, value in sorted(entries.items())]
    commands.append(f"commit map @{version} {map_file}")
    answer = runtime_command(socket_path, ";".join(commands))
    if any(word in answer.lower() for word in ("unknown", "error", "failed", "not ")):
        raise RuntimeError(f"commit map: {' '.join(answer.split())[:300]}")


class EphemeralWatch:
    """The pool's ephemeral builder pods, by list + watch (relisted after any error)."""

    def __init__(self, client: KubeClient, namespace: str, pool: str, on_change: Callable[[], None]):
        self.client = client
        self.namespace = namespace
        self.selector = f"{EPHEMERAL_POOL_LABEL}={pool}"
        self.on_change = on_change
        self._pods: dict[str, PodView] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def pods(self) -> list[PodView]:
        with self._lock:
            return list(self._pods.values())

    def start(self) -> EphemeralWatch:
        threading.Thread(target=self._follow, name="watch-ephemeral", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                body = self.client.request(
                    "GET", pods_path(self.namespace), query={"labelSelector": self.selector}
                ).body
                with self._lock:
                    self._pods = {view.name: view for view in map(pod_view, body.get("items") or ())}
                self.on_change()
                version = (body.get("metadata") or {}).get("resourceVersion") or ""
                query = {"labelSelector": self.selector, "resourceVersion": version}
                for event, obj in self.client.watch(pods_path(self.namespace), query=query, timeout_seconds=300):
                    if self._stop.is_set() or event == "ERROR":
                        break
                    view = pod_view(obj)
                    with self._lock:
                        if event == "DELETED":
                            self._pods.pop(view.name, None)
                        else:
                            self._pods[view.name] = view
                    self.on_change()
            except Exception:  # any failure: list again shortly (a dead thread would go stale)
                self._stop.wait(RETRY_SECONDS)


def run_sync(
    client: KubeClient, options: SyncOptions, stop: threading.Event | None = None, log=None, once: bool = False
) -> None:
    """Keep the map file (and the running proxy's map) equal to the pool, until `stop` is set."""
    log = log or (lambda line: print(f"warmbuild gateway-sync: {line}", file=sys.stderr, flush=True))
    stop = stop or threading.Event()
    changed = threading.Event()
    pool = PoolWatch(client, options.namespace, options.pool).start()
    ephemeral = EphemeralWatch(client, options.namespace, options.pool, changed.set).start()
    written: dict[str, str] | None = None
    pushed: dict[str, str] | None = None
    pushed_at = 0.0
    failing = False
    try:
        while not stop.is_set():
            changed.clear()
            builders, _leases, generation = pool.read()
            entries = map_entries(builders, ephemeral.pods(), options.domain)
            if entries != written:
                write_map(options.map_file, entries)
                written = entries
                routes = ", ".join(f"{key} -> {value}" for key, value in sorted(entries.items()))
                log(f"{len(entries)} builders: {routes or 'none'}")
            if options.runtime_socket and (entries != pushed or time.monotonic() - pushed_at > RESYNC_SECONDS):
                try:
                    push_map(options.runtime_socket, options.map_file, entries)
                    pushed, pushed_at = entries, time.monotonic()
                    if failing:
                        log("the proxy took the map")
                    failing = False
                except (OSError, RuntimeError) as exc:
                    if not failing:
                        log(f"the proxy did not take the map ({exc}); trying again every {RETRY_SECONDS:g}s")
                    failing, pushed = True, None
            if once:
                return
            if not changed.is_set():  # ephemeral pods set `changed`; the pool's watch bumps its generation
                pool.wait_newer(generation, RETRY_SECONDS if failing else WAKE_SECONDS)
    finally:
        pool.stop()
        ephemeral.stop()
