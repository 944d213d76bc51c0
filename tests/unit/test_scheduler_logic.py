"""Pure parts of the scheduler service: access config, token cache, holder identities, polls, scaling signal."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from warmbuild.errors import InputError
from warmbuild.pool.leases import SlotLease
from warmbuild.pool.membership import Builder
from warmbuild.pool.placement import Grant
from warmbuild.pool.status import BuilderStatus, PoolStatus, SlotStatus
from warmbuild.scheduler.auth import Caller, TokenReviewer, Unauthenticated, caller_from_review, parse_access_config
from warmbuild.scheduler.metrics import desired_builders, slots_per_builder
from warmbuild.scheduler.service import AcquireAsk, acquisition_outcome, holder_identity, holder_owner, poll_plan

CONFIG = """
grants:
  - pools: [default, gpu]
    users: ["system:serviceaccount:ci:runner"]
  - pools: [default]
    groups: ["system:serviceaccounts:build-farm"]
audiences: [warmbuild]
"""


def test_access_config_maps_users_and_groups_to_pools():
    config = parse_access_config(CONFIG, "auth.yaml")
    assert config.pools == ("default", "gpu")
    assert config.audiences == ("warmbuild",)
    runner = Caller("system:serviceaccount:ci:runner", ("system:serviceaccounts",))
    farm = Caller("system:serviceaccount:build-farm:x", ("system:serviceaccounts", "system:serviceaccounts:build-farm"))
    stranger = Caller("alice", ("system:authenticated",))
    assert config.allowed_pools(runner) == {"default", "gpu"}
    assert config.may_use(farm, "default") and not config.may_use(farm, "gpu")
    assert config.allowed_pools(stranger) == frozenset()


@pytest.mark.parametrize(
    "text, message",
    [
        ("grants: [", "is not valid YAML"),
        ("{}", "needs a 'grants' list"),
        ("grants: [{pools: [a]}]", "grants[0] names no users, groups or repositories"),
        ("grants: [{users: [u]}]", "grants[0] names no pools"),
        ("grants: [{pools: [a], users: [u], teams: [t]}]", "grants[0] has unknown keys teams"),
        ("grants: [{pools: [a], users: [u], trusted: 'false'}]", "grants[0].trusted must be true or false"),
        ("grants: [{pools: [a], users: [u]}]\nlimits: {concurrent_requests: 0}", "concurrent_requests must be"),
        ("grants: [{pools: [a], users: [u]}]\nlimits: {slots: 1}", "limits must be a mapping"),
        ("grants: [{pools: [a], users: [u]}]\nadmins: [x]", "unknown keys admins"),
        ("grants: [{pools: a, users: [u]}]", "grants[0].pools must be a list of non-empty strings"),
    ],
)
def test_a_bad_access_config_is_one_clear_line(text, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        parse_access_config(text, "auth.yaml")
    assert "\n" not in caught.value.message and "auth.yaml" in caught.value.message


def test_a_token_review_answer_names_the_caller_or_says_why_not():
    review = {
        "status": {"authenticated": True, "user": {"username": "system:serviceaccount:ci:runner", "groups": ["g"]}}
    }
    assert caller_from_review(review) == Caller("system:serviceaccount:ci:runner", ("g",))
    with pytest.raises(Unauthenticated, match="does not accept this token: token has expired"):
        caller_from_review({"status": {"authenticated": False, "error": "token has expired"}})
    with pytest.raises(Unauthenticated, match="does not accept this token: the token is invalid or expired"):
        caller_from_review({"status": {}})


class ReviewingClient:
    """Stands in for KubeClient.request: answers TokenReviews like the API server. Tokens starting
    with 'good' are valid for the audiences asked; 'api-' ones only for the API server's own
    audience (which an API server that was asked for other audiences reports as not authenticated,
    and one asked for none as authenticated for its own); others are invalid."""

    def __init__(self, delay: float = 0.0):
        self.reviews = 0
        self.sent: list[dict] = []
        self.delay = delay
        self._lock = threading.Lock()

    def request(self, method, path, body=None, **_kwargs):
        assert (method, path) == ("POST", "/apis/authentication.k8s.io/v1/tokenreviews")
        with self._lock:
            self.reviews += 1
            self.sent.append(body["spec"])
        time.sleep(self.delay)
        token, asked = body["spec"]["token"], body["spec"].get("audiences")
        if token.startswith("good"):
            status = {"authenticated": True, "user": {"username": token}, "audiences": asked or ["https://kubernetes"]}
        elif token.startswith("api-") and not asked:
            status = {"authenticated": True, "user": {"username": token}, "audiences": ["https://kubernetes"]}
        elif token.startswith("api-"):
            status = {"authenticated": False, "error": 'token audiences ["https://kubernetes"] is invalid'}
        else:
            status = {"authenticated": False}
        return type("Response", (), {"body": {"status": status}})()


def test_answers_are_cached_briefly_and_boundedly_rejections_for_five_seconds():
    client, now = ReviewingClient(), [0.0]
    reviewer = TokenReviewer(client, cache_seconds=30, cache_entries=2, clock=lambda: now[0])
    assert reviewer.review("good-1").username == "good-1"
    assert reviewer.review("good-1").username == "good-1"
    assert client.reviews == 1
    assert client.sent[0]["audiences"] == ["warmbuild-scheduler"]  # the default audience is asked for
    now[0] = 31
    reviewer.review("good-1")
    assert client.reviews == 2  # expired: asked again
    for _ in range(3):
        with pytest.raises(Unauthenticated, match="does not accept this token for audience warmbuild-scheduler"):
            reviewer.review("bad")
    assert client.reviews == 3  # a rejection is cached too
    now[0] = 36.5
    with pytest.raises(Unauthenticated):
        reviewer.review("bad")
    assert client.reviews == 4  # ... for 5 s
    reviewer.review("good-2")  # evicts good-1 (the cache holds 2): least recently used
    reviewer.review("good-1")
    assert client.reviews == 6
    assert all("good" not in key and "bad" not in key for key in reviewer._cache)  # hashes, never the tokens


def test_a_flood_of_bad_tokens_costs_one_review_per_distinct_token_per_window():
    client = ReviewingClient(delay=0.05)  # slow enough that the flood arrives while reviews run
    reviewer = TokenReviewer(client)
    refused: list[str] = []

    def attack(token: str) -> None:
        try:
            reviewer.review(token)
        except Unauthenticated:
            refused.append(token)

    threads = [threading.Thread(target=attack, args=(f"bad-{i % 4}",)) for i in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(refused) == 64 and client.reviews == 4


def test_a_token_for_the_api_servers_audience_only_is_refused_with_one_line():
    reviewer = TokenReviewer(ReviewingClient())
    with pytest.raises(Unauthenticated) as caught:
        reviewer.review("api-runner")
    assert "for audience warmbuild-scheduler" in caught.value.message and "\n" not in caught.value.message
    # An answer that names other audiences (an API server that ignored ours) is refused as well.
    with pytest.raises(Unauthenticated, match="not meant for this scheduler"):
        caller_from_review(
            {"status": {"authenticated": True, "user": {"username": "u"}, "audiences": ["https://kubernetes"]}},
            ("warmbuild-scheduler",),
        )
    # The explicit opt-out (audiences: []) takes the API server's own tokens.
    assert TokenReviewer(ReviewingClient(), audiences=()).review("api-runner").username == "api-runner"


def test_audiences_default_to_the_scheduler_and_an_empty_list_opts_out():
    assert parse_access_config("grants: [{pools: [p], users: [u]}]", "a.yaml").audiences == ("warmbuild-scheduler",)
    assert parse_access_config("grants: [{pools: [p], users: [u]}]\naudiences: []", "a.yaml").audiences == ()


def test_grants_say_who_is_untrusted_and_who_is_admin_and_the_limits():
    config = parse_access_config(
        """
grants:
  - {pools: [default], groups: [ci]}
  - {pools: [default], users: [fork-runner], trusted: false}
  - {pools: [default], users: [oncall], admin: true}
limits: {concurrent_requests: 4, held_slots: 2}
""",
        "auth.yaml",
    )
    fork, runner, oncall = Caller("fork-runner", ("ci",)), Caller("runner", ("ci",)), Caller("oncall")
    assert not config.trusted(fork)  # one grant saying untrusted is enough, whatever the others say
    assert config.trusted(runner) and config.trusted(oncall)
    assert config.is_admin(oncall, "default") and not config.is_admin(oncall, "other")
    assert not config.is_admin(runner, "default")
    assert (config.limits.concurrent_requests, config.limits.held_slots) == (4, 2)
    assert parse_access_config("grants: [{pools: [p], users: [u]}]", "a").limits.concurrent_requests == 16


def test_holder_identities_carry_the_caller_and_only_the_caller_owns_them():
    identity = holder_identity("alice@example.com", "ci-host/42/ab@evil", "u1")
    assert identity == "ci-host/42/abevil/u1@alice@example.com"
    assert holder_owner(identity) == "alice@example.com"
    assert (
        holder_owner(holder_identity("system:serviceaccount:ci:runner", "", "u2")) == "system:serviceaccount:ci:runner"
    )
    assert holder_owner("host/123/abc") == ""  # a direct (non-scheduler) holder is nobody's here
    assert holder_owner("usurper") == ""


@pytest.mark.parametrize(
    "max_wait, waited, asked, expected",
    [
        (120, 0, 30, (120, 30)),  # a long wait: this poll is one of several
        (120, 100, 30, (20, 22)),  # the last poll: the wait runs out inside it, then it spills
        (10, 0, 30, (10, 12)),
        (0, 0, 30, (0, 2)),
        (120, 0, 5, (120, 5)),  # the client asked for shorter polls
        (120, 130, 30, (0, 2)),
    ],
)
def test_poll_plan(max_wait, waited, asked, expected):
    ask = AcquireAsk("default", "k", max_wait_seconds=max_wait, waited_seconds=waited, poll_seconds=asked)
    assert poll_plan(ask, max_poll_seconds=30) == expected


def test_desired_builders_is_demand_over_slots_per_builder():
    assert desired_builders(0, 0, 2) == 0
    assert desired_builders(3, 0, 2) == 2
    assert desired_builders(6, 1, 2) == 4
    assert desired_builders(6, 5, 2.0) == 6
    assert desired_builders(1, 0, 0) == 1  # no ready builders: the default slot count


def _builder(name: str, slots: int, ready: bool = True, draining: bool = False) -> BuilderStatus:
    return BuilderStatus(
        name,
        None,
        ready,
        draining,
        False,
        tuple(SlotStatus(f"{name}-slot-{i}", None, None, None, None, None) for i in range(slots)),
    )


def test_slots_per_builder_counts_ready_builders_only():
    now = datetime.now(timezone.utc)
    status = PoolStatus(
        "ns",
        "p",
        now,
        (_builder("a", 2), _builder("b", 4), _builder("c", 8, ready=False), _builder("d", 8, draining=True)),
    )
    assert slots_per_builder(status) == 3
    assert slots_per_builder(PoolStatus("ns", "p", now, ())) == 2


def _grant(path: str, waited: float) -> Grant:
    lease = SlotLease("ns", "b-slot-0", "b", "h", 1, "1", 15, datetime.now(timezone.utc))
    return Grant(path, lease, Builder("b", "u", "tcp://x:1", 2), path == "warm", "b", waited, "r")


def test_acquisition_outcomes():
    assert acquisition_outcome(_grant("warm", 0.01), waited_before=0) == "affine"
    assert acquisition_outcome(_grant("warm", 3.0), waited_before=0) == "wait"
    assert acquisition_outcome(_grant("warm", 0.0), waited_before=30) == "wait"
    assert acquisition_outcome(_grant("spill", 60), waited_before=0) == "spill"


def test_the_request_limiter_counts_per_identity_and_kind_and_frees_on_exit():
    from warmbuild.scheduler.limits import RequestLimiter, TooManyRequests

    limiter = RequestLimiter(2)
    with limiter.hold("ci", "long"), limiter.hold("ci", "long"):
        with pytest.raises(TooManyRequests, match="limits.concurrent_requests 2") as caught:
            with limiter.hold("ci", "long"):
                pass
        assert caught.value.retry_after >= 1
        with limiter.hold("ci", "short"), limiter.hold("other", "long"):  # renewals and others are not starved
            assert limiter.running("ci", "short") == 1
    assert limiter.running("ci", "long") == 0
    with pytest.raises(RuntimeError):
        with limiter.hold("ci", "long"):
            raise RuntimeError("the request failed")
    assert limiter.running("ci", "long") == 0  # a failed request frees its place too


def test_status_without_holders_keeps_busy_and_free_and_nothing_about_who():
    from dataclasses import asdict

    from warmbuild.pool.status import status_to_dict, without_holders

    busy = SlotStatus("b-slot-0", "h/1@ci", "https://ci/run/9", "team-a/app", 12.0, 1.0, busy=True)
    free = SlotStatus("b-slot-1", None, None, None, None, None)
    status = PoolStatus(
        "ns",
        "default",
        datetime(2026, 1, 1, tzinfo=timezone.utc),
        (BuilderStatus("b", "tcp://10.0.0.1:1234", True, False, False, (busy, free)),),
    )
    hidden = status_to_dict(without_holders(status))
    slots = hidden["builders"][0]["slots"]
    assert hidden["builders"][0]["in_use"] == 1 and [s["busy"] for s in slots] == [True, False]
    text = str(hidden)
    assert "h/1@ci" not in text and "run/9" not in text and "team-a" not in text
    assert asdict(status.builders[0].slots[0])["holder"] == "h/1@ci"  # the original is unchanged
