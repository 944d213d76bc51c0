"""The shared pool watch: a snapshot from one list + watch, waiters woken on change, resync after errors."""

from __future__ import annotations

import queue
import threading
import time

from warmbuild.errors import ClusterError
from warmbuild.kube.client import KubeResponse
from warmbuild.pool.watch import PoolWatch

STATEFULSET = {"metadata": {"name": "b", "uid": "uid-statefulset-b", "labels": {"warmbuild.dev/pool": "default"}}}


def pod(name: str, ready: bool = True, controller_uid: str | None = "uid-statefulset-b") -> dict:
    owners = [{"kind": "StatefulSet", "name": "b", "uid": controller_uid, "controller": True}] if controller_uid else []
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {"warmbuild.dev/pool": "default"},
            "ownerReferences": owners,
        },
        "spec": {"containers": [{"name": "buildkitd", "ports": [{"name": "buildkitd", "containerPort": 1234}]}]},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def lease(name: str, holder: str = "") -> dict:
    spec = {"holderIdentity": holder, "leaseDurationSeconds": 15} if holder else {}
    return {"metadata": {"name": name, "labels": {"warmbuild.dev/pool": "default"}}, "spec": spec}


class WatchingApi:
    """Lists from `objects`; each watch streams what the test puts on that kind's queue (None ends
    the watch; an exception is raised from it, as a broken watch raises)."""

    def __init__(self):
        self.objects = {"pods": [pod("b-0")], "leases": [lease("b-0-slot-0")], "statefulsets": [STATEFULSET]}
        self.events = {"pods": queue.Queue(), "leases": queue.Queue()}
        self.lists = {"pods": 0, "leases": 0, "statefulsets": 0}

    @staticmethod
    def kind(path: str) -> str:
        return path.rsplit("/", 1)[-1]

    def request(self, method, path, body=None, query=None, **_):
        kind = self.kind(path)
        self.lists[kind] += 1
        return KubeResponse(200, {"items": list(self.objects[kind]), "metadata": {"resourceVersion": "1"}}, None)

    def server_now(self):
        raise AssertionError("not needed")

    def watch(self, path, query=None, timeout_seconds=60):
        events = self.events[self.kind(path)]
        while True:
            item = events.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item


def test_the_snapshot_follows_the_watch_and_wakes_waiters_with_no_more_lists():
    api = WatchingApi()
    watch = PoolWatch(api, "ns", "default", sleep=lambda _s: None).start()
    try:
        deadline = time.monotonic() + 5
        while not watch.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        builders, leases, generation = watch.read()
        assert [b.name for b in builders] == ["b-0"] and list(leases) == ["b-0-slot-0"]
        woken = []
        waiter = threading.Thread(target=lambda: woken.append(watch.wait_newer(generation, 5)))
        waiter.start()
        api.events["leases"].put(("MODIFIED", lease("b-0-slot-0", holder="h/1@ci")))
        waiter.join(timeout=5)
        assert woken == [True]
        _builders, leases, _ = watch.read()
        assert leases["b-0-slot-0"].holder == "h/1@ci"
        api.events["pods"].put(("ADDED", pod("b-1")))
        api.events["pods"].put(("DELETED", pod("b-0")))
        assert watch.wait_newer(watch.generation, 0.0) is False  # nothing newer than now
        deadline = time.monotonic() + 5
        while [b.name for b in watch.read()[0]] != ["b-1"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [b.name for b in watch.read()[0]] == ["b-1"]
        assert api.lists["pods"] == 1 and api.lists["leases"] == 1  # the changes cost no list
    finally:
        watch.stop()
        for events in api.events.values():
            events.put(None)


def test_a_broken_watch_lists_again_and_readers_never_see_a_stale_snapshot_meanwhile():
    api = WatchingApi()
    resumed = threading.Event()
    watch = PoolWatch(api, "ns", "default", sleep=lambda _s: resumed.wait(5)).start()
    try:
        deadline = time.monotonic() + 5
        while not watch.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        api.objects["leases"] = [lease("b-0-slot-0", holder="taken-while-broken")]
        api.events["leases"].put(ClusterError("the watch on leases broke"))
        deadline = time.monotonic() + 5
        while watch.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not watch.synced
        lists_before = dict(api.lists)
        _builders, leases, _ = watch.read()  # unsynced: read lists the pool itself
        assert leases["b-0-slot-0"].holder == "taken-while-broken"
        assert api.lists["leases"] == lists_before["leases"] + 1
        resumed.set()  # the backoff ends: list again, watch again
        deadline = time.monotonic() + 5
        while not watch.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.synced and watch.read()[1]["b-0-slot-0"].holder == "taken-while-broken"
    finally:
        watch.stop()
        for events in api.events.values():
            events.put(None)


def test_a_watched_pod_counts_only_if_the_pools_statefulset_controls_it():
    api = WatchingApi()
    watch = PoolWatch(api, "ns", "default", sleep=lambda _s: None).start()
    try:
        deadline = time.monotonic() + 5
        while not watch.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        # Pool-labelled, Ready, ranked anywhere: a pod nobody's StatefulSet controls, and one whose
        # controller is another StatefulSet, never become builders.
        api.events["pods"].put(("ADDED", pod("impostor", controller_uid=None)))
        api.events["pods"].put(("ADDED", pod("other", controller_uid="uid-statefulset-elsewhere")))
        api.events["pods"].put(("ADDED", pod("b-1")))
        deadline = time.monotonic() + 5
        while [b.name for b in watch.read()[0]] != ["b-0", "b-1"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [b.name for b in watch.read()[0]] == ["b-0", "b-1"]
        assert api.lists["statefulsets"] <= 2  # an unknown controller lists the owners again, rate-limited
    finally:
        watch.stop()
        for events in api.events.values():
            events.put(None)
