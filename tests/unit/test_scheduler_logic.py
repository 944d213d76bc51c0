"""Pure parts of the scheduler service: access config, token cache, holder identities, polls, scaling signal."""

from __future__ import annotations

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
        ("grants: [{pools: [a]}]", "grants[0] names no users or groups"),
        ("grants: [{users: [u]}]", "grants[0] names no pools"),
        ("grants: [{pools: [a], users: [u], teams: [t]}]", "grants[0] has unknown keys teams"),
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
    """Stands in for KubeClient.request: answers TokenReviews for tokens starting with 'good'."""

    def __init__(self):
        self.reviews = 0

    def request(self, method, path, body=None, **_kwargs):
        assert (method, path) == ("POST", "/apis/authentication.k8s.io/v1/tokenreviews")
        self.reviews += 1
        token = body["spec"]["token"]
        status = (
            {"authenticated": True, "user": {"username": token}}
            if token.startswith("good")
            else {"authenticated": False}
        )
        return type("Response", (), {"body": {"status": status}})()


def test_accepted_tokens_are_cached_briefly_and_boundedly_rejections_never():
    client, now = ReviewingClient(), [0.0]
    reviewer = TokenReviewer(client, cache_seconds=30, cache_entries=2, clock=lambda: now[0])
    assert reviewer.review("good-1").username == "good-1"
    assert reviewer.review("good-1").username == "good-1"
    assert client.reviews == 1
    now[0] = 31
    reviewer.review("good-1")
    assert client.reviews == 2  # expired: asked again
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            reviewer.review("bad")
    assert client.reviews == 4
    reviewer.review("good-2")
    reviewer.review("good-3")  # evicts good-1, the least recently used
    reviewer.review("good-1")
    assert client.reviews == 7
    assert all("good" not in key for key in reviewer._cache)  # hashes, never the tokens


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
