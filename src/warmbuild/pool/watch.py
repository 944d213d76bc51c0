"""One shared view of a pool, kept by watches: what the scheduler's waiting callers read.

Decision: a scheduler replica may have many callers waiting for slots of one pool; if each listed
the pool's pods and Leases every round, the API server's load would grow with the queue. Instead
one `PoolWatch` per pool lists pods (pool label) and slot Leases (pool label) once, then follows
them with watches (`KubeClient.watch`), and keeps a snapshot; every change bumps a generation and
wakes the waiters (`wait_newer`), which then run their placement round on the snapshot and try
their compare-and-swap. A watch that breaks (an error, 410 Gone, the API server away) is started
again from a fresh list after a short backoff; until it is synced again `read` lists the pool
itself (`placement.LivePool`), so a broken watch costs requests, never correctness.

Membership is verified here as in `membership.list_pool_pods`: a watched pod counts only if its
controller is one of the pool's StatefulSets, by uid. Those uids are listed again at most every
`OWNERS_SECONDS`, and at once (at most every `OWNERS_RETRY_SECONDS`) when a pod names a StatefulSet
controller the snapshot does not know — a StatefulSet re-created with a new uid — so a pod that is
not the pool's never counts, and a real builder waits seconds at most to count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..kube.client import KubeClient
from ..kube.names import POOL_LABEL, leases_path, pods_path
from ..kube.views import LeaseView, PodView, parse_lease, pod_view
from .membership import Builder, builder_from, members, pool_statefulset_uids
from .placement import LivePool

WATCH_SECONDS = 300  # the server ends each watch after this; it is started again from where it was
OWNERS_SECONDS = 60.0  # the pool's StatefulSet uids are listed again after this long
OWNERS_RETRY_SECONDS = 5.0  # at most this often when a pod names an unknown StatefulSet
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)


class _Resync(Exception):
    """The watch cannot go on from its resourceVersion (410 Gone, an ERROR event): list again."""


class PoolWatch:
    """A snapshot of one pool's builder pods and slot Leases, kept current by two watches."""

    def __init__(
        self, client: KubeClient, namespace: str, pool: str, sleep: Callable[[float], None] | None = None
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.pool = pool
        self._live = LivePool(client, namespace, pool)
        self._owners: frozenset[str] = frozenset()
        self._owners_at: float | None = None
        self._owners_lock = threading.Lock()
        self._pods: dict[str, PodView] = {}
        self._leases: dict[str, LeaseView] = {}
        self._synced = {"pods": False, "leases": False}
        self._generation = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._threads = [
            threading.Thread(target=self._follow, args=(kind,), name=f"watch-{pool}-{kind}", daemon=True)
            for kind in ("pods", "leases")
        ]

    def start(self) -> PoolWatch:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    @property
    def synced(self) -> bool:
        with self._changed:
            return all(self._synced.values())

    @property
    def generation(self) -> int:
        with self._changed:
            return self._generation

    def read(self) -> tuple[tuple[Builder, ...], dict[str, LeaseView], int]:
        """(usable builders, slot Leases, generation); listed directly while a watch is not synced."""
        with self._changed:
            synced = all(self._synced.values())
            pods = list(self._pods.values())
            leases, generation = dict(self._leases), self._generation
        if synced:
            owners = self._pool_owners(pods)
            builders = tuple(builder_from(v) for v in members(pods, owners) if v.usable and v.slots > 0)
            return builders, leases, generation
        builders, leases = self._live.read()
        return builders, leases, generation

    def _pool_owners(self, pods: list[PodView]) -> frozenset[str]:
        """The pool's StatefulSet uids, listed again when old, or when a pod names an unknown one."""
        with self._owners_lock:
            now = time.monotonic()
            age = None if self._owners_at is None else now - self._owners_at
            unknown = any(p.controller_kind == "StatefulSet" and p.controller_uid not in self._owners for p in pods)
            if age is None or age > OWNERS_SECONDS or (unknown and age > OWNERS_RETRY_SECONDS):
                self._owners = pool_statefulset_uids(self.client, self.namespace, self.pool)
                self._owners_at = now
            return self._owners

    def wait_newer(self, generation: int, timeout: float) -> bool:
        """Wait until the snapshot is newer than `generation` (True), or `timeout` seconds (False)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._generation <= generation and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return self._generation > generation

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- the two watches ------------------------------------------------------------------------

    def _path(self, kind: str) -> str:
        return pods_path(self.namespace) if kind == "pods" else leases_path(self.namespace)

    def _follow(self, kind: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                version = self._list(kind)
                failures = 0
                while not self._stop.is_set():
                    version = self._watch(kind, version)
            except Exception:  # any failure: unsynced, list again (a thread that died would go stale)
                with self._changed:
                    self._synced[kind] = False  # readers list the pool themselves meanwhile
                self._sleep(BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)])
                failures += 1

    def _list(self, kind: str) -> str:
        query = {"labelSelector": f"{POOL_LABEL}={self.pool}"}
        if kind == "pods":
            query["resourceVersion"] = "0"  # the watch cache, as membership lists them
        body = self.client.request("GET", self._path(kind), query=query).body
        items = body.get("items") or ()
        with self._changed:
            if kind == "pods":
                self._pods = {view.name: view for view in map(pod_view, items)}
            else:
                self._leases = {view.name: view for view in map(parse_lease, items)}
            self._synced[kind] = True
            self._changed_now()
        return (body.get("metadata") or {}).get("resourceVersion") or ""

    def _watch(self, kind: str, version: str) -> str:
        query = {"labelSelector": f"{POOL_LABEL}={self.pool}", "allowWatchBookmarks": "true"}
        if version:
            query["resourceVersion"] = version
        for event, obj in self.client.watch(self._path(kind), query=query, timeout_seconds=WATCH_SECONDS):
            if self._stop.is_set():
                break
            if event == "ERROR":
                raise _Resync(str(obj.get("message") or obj.get("code") or "watch error"))
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if event == "BOOKMARK":
                continue
            name = (obj.get("metadata") or {}).get("name") or ""
            with self._changed:
                table = self._pods if kind == "pods" else self._leases
                if event == "DELETED":
                    table.pop(name, None)
                elif kind == "pods":
                    table[name] = pod_view(obj)
                else:
                    table[name] = parse_lease(obj)
                self._changed_now()
        return version

    def _changed_now(self) -> None:
        """Under the lock: a new generation, and every waiter wakes."""
        self._generation += 1
        self._changed.notify_all()
