"""Verified CI identity at the scheduler: grants on TokenReview's user.extra, trust from verified
claims, workload keys scoped to the verified repository, the OIDC review path, and the chart's
AuthenticationConfiguration naming the same extra keys the scheduler reads."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from warmbuild.errors import InputError
from warmbuild.kube import names
from warmbuild.pool.workload import derive_workload_key, scoped_key
from warmbuild.scheduler.auth import (
    Caller,
    CiIdentity,
    TokenReviewer,
    Unauthenticated,
    ci_identity_from_extra,
    parse_access_config,
)
from warmbuild.scheduler.service import AcquireAsk, workload_key_for

CONFIG = """
grants:
  - pools: [default]
    repositories: ["Octo-Org/*"]
    refs: ["refs/heads/*", "refs/tags/v*"]
    events: [push, workflow_dispatch]
    protected: true
  - pools: [default, forks]
    repositories: ["octo-org/*"]
    events: [pull_request]
    trusted: false
  - pools: [team-b]
    repositories: ["octo-org/b"]
  - pools: [default]
    users: ["system:serviceaccount:ci:runner"]
"""


def ci(repository="octo-org/a", ref="refs/heads/main", event="push", protected=True, fork=False) -> Caller:
    identity = CiIdentity(repository, "github", ref, event, protected, fork, audiences=("warmbuild-scheduler",))
    return Caller(f"github:{repository}", (f"github:{repository.split('/')[0]}",), identity)


def test_grants_match_verified_repository_globs_refs_events_and_protection():
    access = parse_access_config(CONFIG, "auth.yaml")
    assert access.allowed_pools(ci()) == {"default"}
    assert access.allowed_pools(ci(repository="OCTO-ORG/A")) == {"default"}  # GitHub names are case-insensitive
    assert access.allowed_pools(ci(protected=False)) == set()
    assert access.allowed_pools(ci(ref="refs/tags/v1.2")) == {"default"}
    assert access.allowed_pools(ci(event="schedule")) == set()
    assert access.allowed_pools(ci(repository="other-org/a")) == set()
    assert access.allowed_pools(ci(repository="octo-org/b")) == {"default", "team-b"}
    # A service account has no verified claims: attribute grants never name it.
    assert access.allowed_pools(Caller("system:serviceaccount:ci:runner")) == {"default"}
    assert access.allowed_pools(Caller("github:octo-org/a")) == set()


def test_repository_a_cannot_use_the_pool_reserved_for_repository_b():
    access = parse_access_config(CONFIG, "auth.yaml")
    assert not access.may_use(ci(repository="octo-org/a"), "team-b")
    assert access.may_use(ci(repository="octo-org/b"), "team-b")


def test_a_fork_claim_or_its_absence_makes_the_caller_untrusted():
    access = parse_access_config(CONFIG, "auth.yaml")
    assert access.trusted(ci())
    assert not access.trusted(ci(fork=True))
    assert "may run a change from a fork" in access.untrusted_reason(ci(fork=True, event="pull_request_target"))
    # A grant that says trusted: false for pull_request events is enough too.
    assert not access.trusted(ci(event="pull_request"))
    missing = ci_identity_from_extra({names.VERIFIED_REPOSITORY: ["octo-org/a"]})
    assert missing.fork and not access.trusted(Caller("github:octo-org/a", (), missing))


def test_extra_values_become_one_typed_identity():
    extra = {
        names.VERIFIED_REPOSITORY: ["my-group/my-project"],
        names.VERIFIED_ISSUER: ["gitlab"],
        names.VERIFIED_REF: ["refs/heads/main"],
        names.VERIFIED_EVENT: ["push"],
        names.VERIFIED_PROTECTED: ["true"],
        names.VERIFIED_FORK: ["false"],
        names.VERIFIED_AUDIENCE: ["warmbuild-scheduler", "other"],
        "authentication.kubernetes.io/pod-name": ["x"],
    }
    identity = ci_identity_from_extra(extra)
    assert identity == CiIdentity(
        "my-group/my-project", "gitlab", "refs/heads/main", "push", True, False, "", ("warmbuild-scheduler", "other")
    )
    assert ci_identity_from_extra({"authentication.kubernetes.io/pod-name": ["x"]}) is None
    assert ci_identity_from_extra(None) is None


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{pools: [a], repositories: [x], protected: 'yes'}", "protected must be true or false"),
        ("{pools: [a], refs: [x]}", "names no users, groups or repositories"),
        ("{pools: [a], repositories: x}", "repositories must be a list of non-empty strings"),
    ],
)
def test_bad_attribute_grants_are_one_clear_line(entry, message):
    with pytest.raises(InputError, match=message):
        parse_access_config(f"grants: [{entry}]", "auth.yaml")


def test_the_workload_key_of_a_verified_caller_starts_with_its_own_repository():
    a = ci(repository="octo-org/a")
    # The job claims repository B's key: it gets A's key for the same Dockerfile.
    ask = AcquireAsk(pool="default", workload_key="octo-org/b|Dockerfile", max_wait_seconds=0, key_path="Dockerfile")
    assert workload_key_for(a, ask).value == "octo-org/a|Dockerfile"
    # An older client sends only the whole key: its repository part is replaced, not kept.
    old = AcquireAsk(pool="default", workload_key="octo-org/b|Dockerfile", max_wait_seconds=0)
    assert workload_key_for(a, old).value == "octo-org/a|Dockerfile"
    # A key path that pretends to be B's whole key still sits under A.
    forged = AcquireAsk(pool="default", workload_key="x", max_wait_seconds=0, key_path="octo-org/b|Dockerfile")
    assert workload_key_for(a, forged).value.startswith("octo-org/a|")
    assert workload_key_for(a, forged).hash != derive_workload_key("octo-org/b", "Dockerfile").hash
    # Service accounts (no verified repository) name their key as before.
    sa = Caller("system:serviceaccount:ci:runner")
    assert workload_key_for(sa, ask).value == "octo-org/b|Dockerfile"


def test_derived_keys_carry_the_part_a_job_may_choose():
    assert derive_workload_key("r", "Dockerfile").path == "Dockerfile"
    assert derive_workload_key("r", "Dockerfile", "deps", by_target=True).path == "Dockerfile|deps"
    assert derive_workload_key("r", "Dockerfile", explicit="mine").path == "mine"
    assert scoped_key("octo-org/a", "anything", "Dockerfile|deps").value == "octo-org/a|Dockerfile|deps"


def jwt(claims: dict) -> str:
    def part(document):
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


class OidcReviewingClient:
    """Answers TokenReviews like an API server with a JWT authenticator: audience-agnostic (a review
    that asks for other audiences is not authenticated), extras from the claims."""

    def __init__(self, aud: str):
        self.aud = aud
        self.sent: list[dict] = []

    def request(self, method, path, body=None, **_kwargs):
        spec = body["spec"]
        self.sent.append(spec)
        if spec.get("audiences"):
            status = {"authenticated": False}
        else:
            extra = {names.VERIFIED_REPOSITORY: ["octo-org/a"], names.VERIFIED_FORK: ["false"]}
            extra[names.VERIFIED_AUDIENCE] = [self.aud]
            status = {
                "authenticated": True,
                "audiences": ["https://kubernetes.default.svc"],
                "user": {"username": "github:octo-org/a", "groups": ["github:octo-org"], "extra": extra},
            }
        return type("Response", (), {"body": {"status": status}})()


def test_an_oidc_token_is_reviewed_for_the_api_servers_audience_and_its_own_aud_checked():
    token = jwt({"iss": "https://token.actions.githubusercontent.com", "aud": "warmbuild-scheduler"})
    client = OidcReviewingClient(aud="warmbuild-scheduler")
    caller = TokenReviewer(client).review(token)
    assert caller.ci.repository == "octo-org/a" and not caller.ci.fork
    assert [spec.get("audiences") for spec in client.sent] == [["warmbuild-scheduler"], None]


def test_an_oidc_token_minted_for_another_audience_is_refused():
    token = jwt({"iss": "https://token.actions.githubusercontent.com", "aud": "sts.amazonaws.com"})
    with pytest.raises(Unauthenticated, match="not meant for this scheduler"):
        TokenReviewer(OidcReviewingClient(aud="sts.amazonaws.com")).review(token)


def test_the_chart_renders_the_authentication_config_with_the_extra_keys_the_scheduler_reads():
    from helm_render import one, render

    docs = render(sets=("apiServerAuthentication.enabled=true",))
    config_map = one(docs, "ConfigMap", "warmbuild-apiserver-authentication")
    config = yaml.safe_load(config_map["data"]["authentication-config.yaml"])
    assert config["apiVersion"] == "apiserver.config.k8s.io/v1" and config["kind"] == "AuthenticationConfiguration"
    issuers = [entry["issuer"]["url"] for entry in config["jwt"]]
    assert issuers == ["https://token.actions.githubusercontent.com", "https://gitlab.com"]
    wanted = {value for key, value in vars(names).items() if key.startswith("VERIFIED_")}
    for entry in config["jwt"]:
        assert entry["issuer"]["audiences"] == ["warmbuild-scheduler"]
        assert {extra["key"] for extra in entry["claimMappings"]["extra"]} == wanted
        assert entry["claimMappings"]["username"]["expression"].startswith(("'github:'", "'gitlab:'"))
    github_fork = next(e for e in config["jwt"][0]["claimMappings"]["extra"] if e["key"] == names.VERIFIED_FORK)
    assert "pull_request_target" in github_fork["valueExpression"]
    assert not [doc for doc in render() if doc["metadata"]["name"].endswith("apiserver-authentication")]


def test_the_api_servers_aggregate_error_loses_only_its_outer_brackets():
    from warmbuild.scheduler.auth import _short_reason

    reason = '[invalid bearer token, oidc: verify token: oidc: expected audience "a" got ["b"]]'
    assert _short_reason(reason) == 'invalid bearer token, oidc: verify token: oidc: expected audience "a" got ["b"]'
    assert _short_reason("token expired") == "token expired"
