"""Who is calling, which pools they may use, and whether they are trusted or admins.

Callers send a bearer token: a Kubernetes service account token minted for the scheduler's audience
(a projected token), or a CI platform's OIDC ID token (GitHub Actions, GitLab CI) that the API server
verifies itself through its JWT authenticator (structured authentication configuration; the chart
renders it: templates/apiserver-authentication.yaml). The scheduler asks the API server with a
TokenReview (its own identity needs `create tokenreviews`, a ClusterRole) and never validates a JWT
by hand; it then looks the answer up in a small access config:

    # auth-config.yaml
    grants:
      - pools: [default]
        users: ["system:serviceaccount:ci:runner"]
        groups: ["system:serviceaccounts:build-farm"]
      - pools: [default]
        groups: ["system:serviceaccounts:forks"]
        trusted: false       # every build of these callers is untrusted: an ephemeral builder, never a warm slot
      - pools: [default]
        users: ["system:serviceaccount:ops:oncall"]
        admin: true          # sees holders, run URLs and workload keys in /status
      - pools: [default]     # CI jobs by their verified OIDC claims (TokenReview user.extra)
        repositories: ["my-org/*"]        # globs, case-insensitive (GitHub repository, GitLab project_path)
        refs: ["refs/heads/*", "refs/tags/v*"]   # globs on the full ref
        events: [push, merge_group, schedule, workflow_dispatch, merge_request_event]
        protected: true      # only protected refs
    audiences: [warmbuild-scheduler]   # the default; `audiences: []` accepts the API server's own
    limits:
      concurrent_requests: 16   # per identity and replica, for acquire/status and renew/release each
      held_slots: 0             # per identity; 0: no cap (one shared CI identity is the default grant)

A grant names its callers by users, groups and/or verified attributes (repositories, refs, events,
protected); every condition it states must hold. A caller with verified CI claims is a `CiIdentity`:
its repository is the only repository part its workload key can have (`pool.workload.scoped_key`).

Decisions: an audience is required by default, so a token the runner uses for the API server (or
one the scheduler was sent) cannot be replayed here, nor a scheduler token at the API server; the
opt-out is explicit. The API server's JWT authenticators ignore the audiences a TokenReview asks for
(they answer only for the API server's own), so an OIDC token is reviewed without them and accepted
only if its verified `aud` (the extra warmbuild.dev/audience) is one of ours. A caller is untrusted
if any grant naming it says `trusted: false`, or if its verified claims say the change may come from
a fork (warmbuild.dev/fork is "true", or missing: fail closed). Reviews are cached by the token's
hash, bounded: accepted ones for 30 s, rejected ones for 5 s, and concurrent reviews of one token
share one TokenReview, so a flood of bad tokens costs one review per distinct token per window.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import yaml

from ..errors import InputError, WarmbuildError
from ..kube.client import KubeClient
from ..kube.names import (
    TOKEN_REVIEWS_PATH,
    VERIFIED_AUDIENCE,
    VERIFIED_EVENT,
    VERIFIED_FORK,
    VERIFIED_ISSUER,
    VERIFIED_PROTECTED,
    VERIFIED_REF,
    VERIFIED_REPOSITORY,
    VERIFIED_WORKFLOW,
)

CACHE_SECONDS = 30.0
REJECTED_CACHE_SECONDS = 5.0
CACHE_ENTRIES = 1024
DEFAULT_AUDIENCE = "warmbuild-scheduler"
DEFAULT_CONCURRENT_REQUESTS = 16
GRANT_KEYS = ("pools", "users", "groups", "repositories", "refs", "events", "protected", "trusted", "admin")


@dataclass(frozen=True)
class CiIdentity:
    """What a CI platform's ID token says about the job, as the API server verified it (TokenReview
    user.extra, keys in kube/names.py VERIFIED_*)."""

    repository: str
    issuer: str = ""
    ref: str = ""
    event: str = ""
    protected: bool = False
    fork: bool = True  # may run a change from outside; missing counts as true (fail closed)
    workflow: str = ""
    audiences: tuple[str, ...] = ()


@dataclass(frozen=True)
class Caller:
    username: str
    groups: tuple[str, ...] = ()
    ci: CiIdentity | None = None  # set when the token carried verified CI claims


@dataclass(frozen=True)
class AccessRule:
    """Who may use some pools — users, groups and/or verified CI attributes, all stated conditions
    holding — whether they are trusted, and admins there."""

    pools: frozenset[str]
    users: frozenset[str]
    groups: frozenset[str]
    trusted: bool = True
    admin: bool = False
    repositories: tuple[str, ...] = ()  # globs on CiIdentity.repository, case-insensitive
    refs: tuple[str, ...] = ()  # globs on CiIdentity.ref
    events: frozenset[str] = frozenset()
    protected: bool | None = None  # True: protected refs only; False: unprotected only

    @property
    def needs_ci(self) -> bool:
        return bool(self.repositories or self.refs or self.events) or self.protected is not None

    def names(self, caller: Caller) -> bool:
        if (self.users or self.groups) and not (
            caller.username in self.users or self.groups.intersection(caller.groups)
        ):
            return False
        if not self.needs_ci:
            return True
        ci = caller.ci
        if ci is None:
            return False
        if self.repositories and not any(
            fnmatchcase(ci.repository.casefold(), g.casefold()) for g in self.repositories
        ):
            return False
        if self.refs and not any(fnmatchcase(ci.ref, g) for g in self.refs):
            return False
        if self.events and ci.event not in self.events:
            return False
        return self.protected is None or ci.protected == self.protected


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
        """False if the caller's verified claims say fork (or do not say), or if any grant naming the
        caller says `trusted: false`: one such grant is enough."""
        if caller.ci is not None and caller.ci.fork:
            return False
        return not any(grant.names(caller) and not grant.trusted for grant in self.grants)

    def untrusted_reason(self, caller: Caller) -> str:
        if caller.ci is not None and caller.ci.fork:
            return (
                f"its verified {caller.ci.issuer or 'CI'} token is for a '{caller.ci.event or 'unknown'}' event, "
                "which may run a change from a fork"
            )
        return "its grant says trusted: false"

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
        raise InputError(f"{where} must be a mapping with pools, users, groups or repositories")
    unknown = set(entry) - set(GRANT_KEYS)
    if unknown:
        raise InputError(f"{where} has unknown keys {', '.join(sorted(unknown))} (allowed: {', '.join(GRANT_KEYS)})")
    pools = _string_list(entry.get("pools"), f"{where}.pools")
    users = _string_list(entry.get("users"), f"{where}.users")
    groups = _string_list(entry.get("groups"), f"{where}.groups")
    repositories = tuple(sorted(_string_list(entry.get("repositories"), f"{where}.repositories")))
    refs = tuple(sorted(_string_list(entry.get("refs"), f"{where}.refs")))
    events = _string_list(entry.get("events"), f"{where}.events")
    protected = entry.get("protected")
    if protected is not None and not isinstance(protected, bool):
        raise InputError(f"{where}.protected must be true or false (unquoted), not {protected!r}")
    if not pools:
        raise InputError(f"{where} names no pools")
    if not users and not groups and not repositories:
        raise InputError(f"{where} names no users, groups or repositories")
    return AccessRule(
        pools,
        users,
        groups,
        _flag(entry, "trusted", True, where),
        _flag(entry, "admin", False, where),
        repositories=repositories,
        refs=refs,
        events=events,
        protected=protected,
    )


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


def _one(extra: dict, key: str) -> str:
    values = extra.get(key) or ()
    return str(values[0]) if isinstance(values, list) and values else ""


def ci_identity_from_extra(extra) -> CiIdentity | None:
    """The verified CI claims in a TokenReview's user.extra; None without a repository."""
    if not isinstance(extra, dict) or not _one(extra, VERIFIED_REPOSITORY):
        return None
    audiences = extra.get(VERIFIED_AUDIENCE) or ()
    return CiIdentity(
        repository=_one(extra, VERIFIED_REPOSITORY),
        issuer=_one(extra, VERIFIED_ISSUER),
        ref=_one(extra, VERIFIED_REF),
        event=_one(extra, VERIFIED_EVENT),
        protected=_one(extra, VERIFIED_PROTECTED) == "true",
        fork=_one(extra, VERIFIED_FORK) != "false",
        workflow=_one(extra, VERIFIED_WORKFLOW),
        audiences=tuple(str(a) for a in audiences) if isinstance(audiences, list) else (),
    )


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
    return Caller(
        username=user["username"], groups=tuple(user.get("groups") or ()), ci=ci_identity_from_extra(user.get("extra"))
    )


def ci_caller_from_review(review: dict, audiences: tuple[str, ...]) -> Caller:
    """A review made without audiences (JWT authenticators answer only for the API server's own):
    accepted only with verified CI claims whose audience is one of ours."""
    status = review.get("status") or {}
    wanted = ", ".join(audiences)
    if not status.get("authenticated"):
        reason = status.get("error") or "the token is invalid or expired"
        raise Unauthenticated(
            f"the Kubernetes API does not accept this token: {_short_reason(reason)} "
            f"(send a CI job's OIDC token or a service account token minted for audience {wanted})"
        )
    caller = caller_from_review(review)
    if caller.ci is None or not set(caller.ci.audiences).intersection(audiences):
        raise Unauthenticated(
            f"the token is not meant for this scheduler: its audiences are not {wanted} "
            f"(send a token minted for audience {wanted}, e.g. a projected service account token)"
        )
    return caller


def _short_reason(reason: str) -> str:
    """The API server's aggregate error in one line, without its brackets."""
    return " ".join(str(reason).strip().strip("[]").split())


def _looks_like_jwt_of_another_issuer(token: str) -> bool:
    """Whether the token's (unverified) payload names an issuer other than Kubernetes service
    accounts: only to choose which of two refusals explains the problem better, never to accept."""
    import base64
    import json

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return False
    return isinstance(claims, dict) and "kubernetes.io" not in claims and bool(claims.get("iss"))


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

    def _review(self, token: str, audiences: tuple[str, ...]) -> dict:
        spec: dict = {"token": token}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        return self.client.request("POST", TOKEN_REVIEWS_PATH, body=body).body  # errors: not cached

    def _ask(self, key: str, token: str) -> Caller | Unauthenticated:
        review = self._review(token, self.audiences)
        try:
            answer: Caller | Unauthenticated = caller_from_review(review, self.audiences)
            seconds = self.cache_seconds
        except Unauthenticated as exc:
            answer, seconds = exc, self.rejected_cache_seconds
            # A CI platform's OIDC token: reviewed again for the API server's own audience, then its
            # verified aud checked. Whether to try is read from the unverified payload (only that).
            if self.audiences and _looks_like_jwt_of_another_issuer(token):
                try:
                    answer = ci_caller_from_review(self._review(token, ()), self.audiences)
                    seconds = self.cache_seconds
                except Unauthenticated as ci_exc:
                    answer = ci_exc
        with self._lock:
            self._cache[key] = (self.clock() + seconds, answer)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        return answer
