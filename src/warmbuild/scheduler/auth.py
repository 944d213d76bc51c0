"""Who is calling, and which pools they may use.

Callers send a Kubernetes bearer token (usually their service account's). The scheduler asks the
API server whether it is valid with a TokenReview (its own identity needs `create tokenreviews`,
a ClusterRole), then looks the user name and groups up in a small access config:

    # auth-config.yaml
    grants:
      - pools: [default]
        users: ["system:serviceaccount:ci:runner"]
        groups: ["system:serviceaccounts:build-farm"]
    audiences: []          # optional: tokens must be minted for one of these

Positive reviews are cached briefly (30 s, bounded), so a build's renewals do not each cost a
TokenReview; rejections are not cached.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import InputError, WarmbuildError
from ..kube.client import KubeClient
from ..kube.names import TOKEN_REVIEWS_PATH

CACHE_SECONDS = 30.0
CACHE_ENTRIES = 1024


@dataclass(frozen=True)
class Caller:
    username: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessRule:
    """Users and groups that may use some pools."""

    pools: frozenset[str]
    users: frozenset[str]
    groups: frozenset[str]


@dataclass(frozen=True)
class AccessConfig:
    grants: tuple[AccessRule, ...]
    audiences: tuple[str, ...] = ()

    @property
    def pools(self) -> tuple[str, ...]:
        """Every pool named in the config: the pools this scheduler serves and reports on."""
        return tuple(sorted(set().union(*(g.pools for g in self.grants)))) if self.grants else ()

    def allowed_pools(self, caller: Caller) -> frozenset[str]:
        allowed: set[str] = set()
        for grant in self.grants:
            if caller.username in grant.users or grant.groups.intersection(caller.groups):
                allowed |= grant.pools
        return frozenset(allowed)

    def may_use(self, caller: Caller, pool: str) -> bool:
        return pool in self.allowed_pools(caller)


class Unauthenticated(WarmbuildError):
    """The token is missing or the API server does not accept it (HTTP 401)."""


def _string_list(value, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{where} must be a list of non-empty strings")
    return frozenset(value)


def parse_access_config(text: str, source: str) -> AccessConfig:
    """The access config from YAML (or JSON, which is YAML); one clear line per problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"auth config {source} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("grants"), list):
        raise InputError(f"auth config {source} needs a 'grants' list (each with pools and users or groups)")
    grants = []
    for index, entry in enumerate(data["grants"]):
        where = f"auth config {source}: grants[{index}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where} must be a mapping with pools, users, groups")
        unknown = set(entry) - {"pools", "users", "groups"}
        if unknown:
            raise InputError(f"{where} has unknown keys {', '.join(sorted(unknown))} (allowed: pools, users, groups)")
        pools = _string_list(entry.get("pools"), f"{where}.pools")
        users = _string_list(entry.get("users"), f"{where}.users")
        groups = _string_list(entry.get("groups"), f"{where}.groups")
        if not pools:
            raise InputError(f"{where} names no pools")
        if not users and not groups:
            raise InputError(f"{where} names no users or groups")
        grants.append(AccessRule(pools, users, groups))
    audiences = tuple(sorted(_string_list(data.get("audiences"), f"auth config {source}: audiences")))
    return AccessConfig(tuple(grants), audiences)


def load_access_config(path: str | Path) -> AccessConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read auth config {path}: {exc.strerror or exc}") from None
    return parse_access_config(text, str(path))


def caller_from_review(review: dict) -> Caller:
    """The caller a TokenReview answer names; Unauthenticated if it says the token is not valid."""
    status = review.get("status") or {}
    if not status.get("authenticated"):
        reason = status.get("error") or "the token is invalid or expired"
        raise Unauthenticated(f"the Kubernetes API does not accept this token: {reason}")
    user = status.get("user") or {}
    if not user.get("username"):
        raise Unauthenticated("the Kubernetes API accepted this token but named no user")
    return Caller(username=user["username"], groups=tuple(user.get("groups") or ()))


class TokenReviewer:
    """Bearer token -> Caller, by TokenReview, with a short bounded cache of accepted tokens."""

    def __init__(
        self,
        client: KubeClient,
        audiences: tuple[str, ...] = (),
        cache_seconds: float = CACHE_SECONDS,
        cache_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.audiences = audiences
        self.cache_seconds = cache_seconds
        self.cache_entries = cache_entries
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, Caller]] = OrderedDict()
        self._lock = threading.Lock()

    def review(self, token: str) -> Caller:
        key = hashlib.sha256(token.encode()).hexdigest()  # never keep the token itself
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[0] > now:
                self._cache.move_to_end(key)
                return cached[1]
        spec: dict = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        caller = caller_from_review(self.client.request("POST", TOKEN_REVIEWS_PATH, body=body).body)
        with self._lock:
            self._cache[key] = (now + self.cache_seconds, caller)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        return caller
