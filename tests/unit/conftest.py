"""Shared fixtures of the unit tests: a fake clock, and an in-memory Lease API with real
compare-and-swap (the narrow interface `pool.leases.LeaseApi`), so slot rules run without a cluster."""

from __future__ import annotations

import copy
import itertools
import re
from datetime import datetime, timedelta, timezone

import pytest

from warmbuild.kube.client import KubeConflict, KubeNotFound, KubeResponse

SERVER_EPOCH = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
_LEASE_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")


class FakeClock:
    """Monotonic time that moves only when the code under test sleeps."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


class FakeLeaseApi:
    """coordination.k8s.io/v1 Leases in memory, as the API server treats them: POST of an existing
    name, PUT or DELETE with a stale resourceVersion (or uid precondition) answer 409; a missing
    Lease answers 404. `server_now` is the fake API server's clock, moved by `advance`."""

    def __init__(self, now: datetime = SERVER_EPOCH):
        self.now = now
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.timeouts: list[float | None] = []  # the `timeout` of each request, in order
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def server_now(self) -> datetime:
        return self.now

    def get(self, namespace: str, name: str) -> dict:
        return copy.deepcopy(self.objects[(namespace, name)])

    def request(
        self, method, path, body=None, query=None, content_type="application/json", timeout=None
    ) -> KubeResponse:
        self.requests.append((method, path))
        self.timeouts.append(timeout)
        match = _LEASE_PATH.match(path.split("?")[0])
        assert match, f"the fake serves Leases only, not {path}"
        namespace, name = match.groups()
        return KubeResponse(200, self._serve(method, namespace, name, copy.deepcopy(body), query or {}), self.now)

    def _serve(self, method: str, namespace: str, name: str | None, body, query) -> dict:
        key = (namespace, name)
        if method == "GET" and name is None:
            wanted = dict(term.split("=", 1) for term in query.get("labelSelector", "").split(",") if term)
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self.objects.items())
                if ns == namespace and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
            ]
            return {"kind": "LeaseList", "items": items}
        if method == "POST":
            key = (namespace, body["metadata"]["name"])
            if key in self.objects:
                raise KubeConflict(f"leases {key[1]} already exists")
            body["metadata"].update(
                namespace=namespace, uid=f"lease-uid-{next(self._uids)}", resourceVersion=str(next(self._versions))
            )
            self.objects[key] = body
            return copy.deepcopy(body)
        if key not in self.objects:
            raise KubeNotFound(f"leases {name} not found")
        stored = self.objects[key]["metadata"]
        if method == "GET":
            return copy.deepcopy(self.objects[key])
        if method == "PUT":
            if body["metadata"].get("resourceVersion") != stored["resourceVersion"]:
                raise KubeConflict(f"leases {name}: the object has been modified")
            body["metadata"].update(uid=stored["uid"], resourceVersion=str(next(self._versions)))
            self.objects[key] = body
            return copy.deepcopy(body)
        if method == "DELETE":
            preconditions = (body or {}).get("preconditions") or {}
            if any(
                stored.get(field) != preconditions[pre]
                for pre, field in (("uid", "uid"), ("resourceVersion", "resourceVersion"))
                if pre in preconditions
            ):
                raise KubeConflict(f"leases {name}: precondition failed")
            del self.objects[key]
            return {"kind": "Status", "status": "Success"}
        raise AssertionError(f"the fake does not serve {method}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lease_api() -> FakeLeaseApi:
    return FakeLeaseApi()
