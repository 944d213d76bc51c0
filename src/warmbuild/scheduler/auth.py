"""Who is calling, which pools they may use, and whether they are trusted or admins.

Callers send a Kubernetes bearer token minted for the scheduler's audience (a projected service
account token). The scheduler asks the API server whether it is valid with a TokenReview (its own
identity needs `create tokenreviews`, a ClusterRole) for that audience and checks the audiences the
answer names, then looks the user name and groups up in a small access config:

    # auth-config.yaml
    grants:
      - pools: [default]
        users: ["system:serviceaccount:ci:runner"]
        groups: ["system:serviceaccounts:build-farm"]
      - pools: [default]
        groups: ["system:serviceaccounts:forks"]
        trusted: false       # every build of these callers is untrusted: no warm slot, ever
      - pools: [default]
        users: ["system:serviceaccount:ops:oncall"]
        admin: true          # sees holders, run URLs and workload keys in /status
    audiences: [warmbuild-scheduler]   # the default; `audiences: []` accepts the API server's own
    limits:
      concurrent_requests: 16   # per identity and replica, for acquire/status and renew/release each
      held_slots: 0             # per identity; 0: no cap (one shared CI identity is the default grant)

Decisions: an audience is required by default, so a token the runner uses for the API server (or
one the scheduler was sent) cannot be replayed here, nor a scheduler token at the API server; the
opt-out is explicit. A caller is untrusted if any grant naming it says `trusted: false` (fail
closed). Reviews are cached by the token's hash, bounded: accepted ones for 30 s, rejected ones for
5 s, and concurrent reviews of one token share one TokenReview, so a flood of bad tokens costs one
review per distinct token per window.
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
REJECTED_CACHE_SECONDS = 5.0
CACHE_ENTRIES = 1024
DEFAULT_AUDIENCE = "warmbuild-scheduler"
DEFAULT_CONCURRENT_REQUESTS = 16
GRANT_KEYS = ("pools", "users", "groups", "trusted", "admin")


@dataclass(frozen=True)
class Caller:
    username: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessRule:
    """Users and groups that may use some pools; whether they are trusted, and admins there."""

    pools: frozenset[str]
    users: frozenset[str]
    groups: frozenset[str]
    trusted: bool = True
    admin: bool = False

    def names(self, caller: Caller) -> bool:
        return caller.username in self.users or bool(self.groups.intersection(caller.groups))


@dataclass(frozen=True)
class Limits:
    """Per identity (a TokenReview user name), per replica."""

    concurrent_requests: int = DEFAULT_CONCURRENT_REQUESTS
    held_slots: int = 0  # 0: no cap


@dataclass(frozen=True)
class AccessConfig:
    grants: tuple[AccessRule, ...]
    audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,)
    limits: Limits = Limits()

    @property
    def pools(self) -> tuple[str, ...]:
        """Every pool named in the config: the pools this scheduler serves and reports on."""
        return tuple(sorted(set().union(*(g.pools for g in self.grants)))) if self.grants else ()

    def allowed_pools(self, caller: Caller) -> frozenset[str]:
        allowed: set[str] = set()
        for grant in self.grants:
            if grant.names(caller):
                allowed |= grant.pools
        return frozenset(allowed)

    def may_use(self, caller: Caller, pool: str) -> bool:
        return pool in self.allowed_pools(caller)

    def trusted(self, caller: Caller) -> bool:
        """False if any grant naming the caller says `trusted: false`: one such grant is enough."""
        return not any(grant.names(caller) and not grant.trusted for grant in self.grants)

    def is_admin(self, caller: Caller, pool: str) -> bool:
        return any(grant.names(caller) and grant.admin and pool in grant.pools for grant in self.grants)


class Unauthenticated(WarmbuildError):
    """The token is missing or the API server does not accept it (HTTP 401)."""


def _string_list(value, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{where} must be a list of non-empty strings")
    return frozenset(value)


def _flag(entry: dict, key: str, default: bool, where: str) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise InputError(f"{where}.{key} must be true or false (unquoted), not {value!r}")
    return value


def _grant(entry, where: str) -> AccessRule:
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a mapping with pools, users, groups")
    unknown = set(entry) - set(GRANT_KEYS)
    if unknown:
        raise InputError(f"{where} has unknown keys {', '.join(sorted(unknown))} (allowed: {', '.join(GRANT_KEYS)})")
    pools = _string_list(entry.get("pools"), f"{where}.pools")
    users = _string_list(entry.get("users"), f"{where}.users")
    groups = _string_list(entry.get("groups"), f"{where}.groups")
    if not pools:
        raise InputError(f"{where} names no pools")
    if not users and not groups:
        raise InputError(f"{where} names no users or groups")
    return AccessRule(pools, users, groups, _flag(entry, "trusted", True, where), _flag(entry, "admin", False, where))


def _limits(value, where: str) -> Limits:
    if value is None:
        return Limits()
    if not isinstance(value, dict) or set(value) - {"concurrent_requests", "held_slots"}:
        raise InputError(f"{where} must be a mapping with concurrent_requests and/or held_slots")
    limits = Limits()
    for key, least in (("concurrent_requests", 1), ("held_slots", 0)):
        number = value.get(key, getattr(limits, key))
        if not isinstance(number, int) or isinstance(number, bool) or number < least:
            raise InputError(f"{where}.{key} must be a whole number of at least {least}")
    return Limits(**{**limits.__dict__, **value})


def parse_access_config(text: str, source: str) -> AccessConfig:
    """The access config from YAML (or JSON, which is YAML); one clear line per problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"auth config {source} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("grants"), list):
        raise InputError(f"auth config {source} needs a 'grants' list (each with pools and users or groups)")
    unknown = set(data) - {"grants", "audiences", "limits"}
    if unknown:
        raise InputError(
            f"auth config {source} has unknown keys {', '.join(sorted(unknown))} (allowed: grants, audiences, limits)"
        )
    grants = tuple(_grant(entry, f"auth config {source}: grants[{i}]") for i, entry in enumerate(data["grants"]))
    if "audiences" in data:  # present, even as [], is a choice; absent is the default audience
        audiences = tuple(sorted(_string_list(data["audiences"] or [], f"auth config {source}: audiences")))
    else:
        audiences = (DEFAULT_AUDIENCE,)
    return AccessConfig(grants, audiences, _limits(data.get("limits"), f"auth config {source}: limits"))


def load_access_config(path: str | Path) -> AccessConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read auth config {path}: {exc.strerror or exc}") from None
    return parse_access_config(text, str(path))


def caller_from_review(review: dict, audiences: tuple[str, ...] = ()) -> Caller:
    """The caller a TokenReview answer names; Unauthenticated if it says the token is not valid, or
    (with `audiences`) if the audiences it names are none of ours."""
    status = review.get("status") or {}
    wanted = ", ".join(audiences)
    if not status.get("authenticated"):
        reason = status.get("error") or "the token is invalid or expired"
        if audiences:
            raise Unauthenticated(
                f"the Kubernetes API does not accept this token for audience {wanted}: {reason} "
                f"(send a token minted for audience {wanted}, e.g. a projected service account token)"
            )
        raise Unauthenticated(f"the Kubernetes API does not accept this token: {reason}")
    if audiences and not set(status.get("audiences") or ()).intersection(audiences):
        raise Unauthenticated(
            f"the token is not meant for this scheduler: its audiences are not {wanted} "
            f"(send a token minted for audience {wanted}, e.g. a projected service account token)"
        )
    user = status.get("user") or {}
    if not user.get("username"):
        raise Unauthenticated("the Kubernetes API accepted this token but named no user")
    return Caller(username=user["username"], groups=tuple(user.get("groups") or ()))


class TokenReviewer:
    """Bearer token -> Caller, by TokenReview, with a short bounded cache of answers (rejections
    included) keyed by the token's hash; concurrent reviews of one token share one request."""

    def __init__(
        self,
        client: KubeClient,
        audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,),
        cache_seconds: float = CACHE_SECONDS,
        cache_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        rejected_cache_seconds: float = REJECTED_CACHE_SECONDS,
    ):
        self.client = client
        self.audiences = audiences
        self.cache_seconds = cache_seconds
        self.rejected_cache_seconds = rejected_cache_seconds
        self.cache_entries = cache_entries
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, Caller | Unauthenticated]] = OrderedDict()
        self._in_flight: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def review(self, token: str) -> Caller:
        key = hashlib.sha256(token.encode()).hexdigest()  # never keep the token itself
        answer = self._cached(key)
        if answer is None:
            with self._lock:
                single = self._in_flight.setdefault(key, threading.Lock())
            with single:  # one TokenReview per token at a time; the others then find it cached
                answer = self._cached(key)
                if answer is None:
                    answer = self._ask(key, token)
            with self._lock:
                self._in_flight.pop(key, None)
        if isinstance(answer, Unauthenticated):
            raise Unauthenticated(answer.message)
        return answer

    def _cached(self, key: str) -> Caller | Unauthenticated | None:
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[0] > self.clock():
                self._cache.move_to_end(key)
                return cached[1]
        return None

    def _ask(self, key: str, token: str) -> Caller | Unauthenticated:
        spec: dict = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        review = self.client.request("POST", TOKEN_REVIEWS_PATH, body=body).body  # errors: not cached
        try:
            answer: Caller | Unauthenticated = caller_from_review(review, self.audiences)
            seconds = self.cache_seconds
        except Unauthenticated as exc:
            answer, seconds = exc, self.rejected_cache_seconds
        with self._lock:
            self._cache[key] = (self.clock() + seconds, answer)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        return answer
