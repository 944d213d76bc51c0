"""Verified CI identity on the real API server: tokens shaped like GitHub's and GitLab's, minted by
the testbed's OIDC issuer stand-in (testbed/oidc_issuer.py), verified by kube-apiserver's JWT
authenticators (the chart's AuthenticationConfiguration), and used by a real `warmbuild scheduler`
and the real CLI with no cluster credentials on the runner.

Attacks (docs/security.md): a token for repository A asking for B's key or B's pool; a fork pull
request's token asking for a warm builder or a cache export; a token minted for another audience,
by an issuer the API server does not know, or expired.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest
import requests
from poolkit import wait_for
from scheduler_harness import NAMESPACE, SchedulerProcess, prepare

from warmbuild.kube import names

REPO = Path(__file__).resolve().parents[2]
AUDIENCE = "warmbuild-scheduler"
POOL = "default"
MANIFEST_TYPES = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"

if not os.environ.get("WARMBUILD_OIDC_ISSUER"):
    if os.environ.get("WARMBUILD_REQUIRE_TESTBED") == "1":
        raise RuntimeError("the testbed exports no WARMBUILD_OIDC_ISSUER: its control plane predates the OIDC issuer")
    pytest.skip("no testbed OIDC issuer (testbed/up)", allow_module_level=True)

sys.path.insert(0, str(REPO / "testbed"))
import oidc_issuer  # noqa: E402  (the stand-in's own minting code, reading its keys)

GRANTS = [
    # Pushes to protected refs of octo-org: trusted, the shared pool.
    {"pools": [POOL], "repositories": ["octo-org/*"], "events": ["push"], "protected": True},
    # Any event of octo-org (pull requests included): trust then comes from the verified fork claim.
    {"pools": [POOL], "repositories": ["octo-org/*", "my-group/*"]},
    # A pool reserved for repository B.
    {"pools": ["team-b"], "repositories": ["octo-org/b"]},
]


def mint(issuer="github", audience=AUDIENCE, expires_in=300, **claims) -> str:
    return oidc_issuer.mint(issuer, audience, claims, expires_in)


def github(repository="octo-org/a", event_name="push", **claims) -> str:
    return mint("github", **oidc_issuer.github_claims(repository, event_name, **claims))


def review(admin, token: str) -> dict:
    """A TokenReview for the API server's own audience: what JWT authenticators answer."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    return admin.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body).body["status"]


@pytest.fixture(scope="module")
def scheduler(admin, tmp_path_factory):
    directory = tmp_path_factory.mktemp("identity-scheduler")
    setup = prepare(admin, directory, GRANTS, ephemeral_builders=True)
    ephemeral = directory / "ephemeral.yaml"
    ephemeral.write_text("startupTimeoutSeconds: 120\n")
    process = SchedulerProcess(admin, setup, "identity", extra_args=("--ephemeral-config", str(ephemeral)))
    yield process
    process.stop()


def acquire(scheduler, token: str, pool: str = POOL, **body) -> requests.Response:
    document = {"workload_key": "octo-org/b|Dockerfile", "key_path": "Dockerfile", "max_wait_seconds": 0, **body}
    return requests.post(
        f"{scheduler.url}/v1/pools/{pool}/acquire",
        json=document,
        headers={"Authorization": f"Bearer {token}"},
        verify=str(scheduler.setup.ca),
        timeout=60,
    )


def release(scheduler, token: str, answer: dict) -> requests.Response:
    lease = answer["lease"]
    return requests.post(
        f"{scheduler.url}/v1/slots/{lease['name']}/release",
        json={"holder": lease["holder"], "release_token": lease["release_token"]},
        headers={"Authorization": f"Bearer {token}"},
        verify=str(scheduler.setup.ca),
        timeout=30,
    )


# ---------------------------------------------------------------------- the API server's verdict


def test_the_api_server_verifies_a_github_token_and_returns_the_mapped_claims(admin):
    status = review(admin, github("octo-org/app", "push"))
    assert status["authenticated"], status
    user = status["user"]
    assert user["username"] == "github:octo-org/app" and "github:octo-org" in user["groups"]
    extra = user["extra"]
    assert extra[names.VERIFIED_REPOSITORY] == ["octo-org/app"]
    assert extra[names.VERIFIED_ISSUER] == ["github"]
    assert extra[names.VERIFIED_REF] == ["refs/heads/main"]
    assert extra[names.VERIFIED_EVENT] == ["push"]
    assert extra[names.VERIFIED_PROTECTED] == ["true"]
    assert extra[names.VERIFIED_FORK] == ["false"]
    assert extra[names.VERIFIED_WORKFLOW] == ["octo-org/app/.github/workflows/ci.yml@refs/heads/main"]
    assert extra[names.VERIFIED_AUDIENCE] == [AUDIENCE]
    # A pull_request_target runs on the base's protected ref, yet may build a fork's head: fork.
    target = review(admin, github("octo-org/app", "pull_request_target"))["user"]["extra"]
    assert target[names.VERIFIED_FORK] == ["true"]


def test_the_api_server_verifies_a_gitlab_token_and_maps_a_merge_request_to_fork(admin):
    claims = oidc_issuer.gitlab_claims("my-group/my-project", "merge_request_event", ref="feature")
    status = review(admin, mint("gitlab", **claims))
    assert status["authenticated"], status
    extra = status["user"]["extra"]
    assert status["user"]["username"] == "gitlab:my-group/my-project"
    assert extra[names.VERIFIED_REF] == ["refs/heads/feature"] and extra[names.VERIFIED_EVENT] == [
        "merge_request_event"
    ]
    assert extra[names.VERIFIED_FORK] == ["true"] and extra[names.VERIFIED_PROTECTED] == ["false"]


# ---------------------------------------------------------------------- grants and keys at the scheduler


def test_a_verified_repository_gets_its_own_key_whatever_the_job_names(scheduler, admin):
    token = github("octo-org/a", "push")
    answer = acquire(scheduler, token, workload_key="octo-org/b|Dockerfile", key_path="octo-org/b|Dockerfile")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["decision"] == "granted" and document["untrusted"] is False
    assert document["workload_key"] == "octo-org/a|octo-org/b|Dockerfile"
    lease = admin.request(
        "GET", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{document['lease']['name']}"
    )
    annotations = lease.body["metadata"]["annotations"]
    assert annotations[names.WORKLOAD_KEY_ANNOTATION].startswith("octo-org/a|")
    assert document["lease"]["holder"].endswith("@github:octo-org/a")
    assert release(scheduler, token, document).json() == {"released": True}


def test_repository_a_cannot_use_the_pool_reserved_for_repository_b(scheduler):
    refused = acquire(scheduler, github("octo-org/a", "push"), pool="team-b")
    assert refused.status_code == 403 and "may not use pool 'team-b'" in refused.json()["error"]
    stranger = acquire(scheduler, github("other-org/x", "push"))
    assert stranger.status_code == 403 and "github:other-org/x may not use pool 'default'" in stranger.json()["error"]
    # B itself may, by its verified repository (its key then starts with octo-org/b).
    allowed = acquire(scheduler, github("octo-org/b", "push"), pool="team-b")
    assert allowed.status_code != 403, allowed.text


def test_a_fork_pull_request_gets_a_rootless_untrusted_ephemeral_builder_never_a_warm_slot(scheduler, admin):
    token = github("octo-org/a", "pull_request")
    answer = acquire(scheduler, token, lease_seconds=30)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["untrusted"] is True and document["path"] == "ephemeral"
    name = document["builder"]["name"]
    assert name == document["lease"]["name"] and name.startswith("warmbuild-default-ephemeral-")
    pod = admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}").body
    labels = pod["metadata"]["labels"]
    assert labels[names.UNTRUSTED_LABEL] == "true" and names.POOL_LABEL not in labels
    container = pod["spec"]["containers"][0]
    assert container["image"].endswith("-rootless") and container["securityContext"]["runAsUser"] == 1000
    assert "privileged" not in container["securityContext"]
    assert document["run_tls"]["server_name"] == document["builder"]["server_name"]
    assert release(scheduler, token, document).json() == {"released": True}

    def gone() -> bool:
        pods = admin.request(
            "GET", f"/api/v1/namespaces/{NAMESPACE}/pods", query={"fieldSelector": f"metadata.name={name}"}
        )
        return not pods.body["items"] or pods.body["items"][0]["metadata"].get("deletionTimestamp")

    wait_for(gone, 20, interval=0.5, what=f"ephemeral builder {name} deleted")


def github_job(claims: dict) -> dict[str, str]:
    """A GitHub job's OIDC environment, from the stand-in's token-request endpoint."""
    issuer = f"{os.environ['WARMBUILD_OIDC_ISSUER']}/github"
    job = requests.post(f"{issuer}/jobs", json=claims, verify=os.environ["WARMBUILD_OIDC_CA"], timeout=10).json()
    return {
        "ACTIONS_ID_TOKEN_REQUEST_URL": job["request_url"],
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": job["request_token"],
        "REQUESTS_CA_BUNDLE": os.environ["WARMBUILD_OIDC_CA"],  # the stand-in's CA, for the token request only
    }


def off_cluster_env(**extra: str) -> dict[str, str]:
    """A runner with no cluster credentials and no builder address: only the scheduler."""
    blank = {n: "" for n in os.environ if n.startswith(("GITHUB_", "CI_", "RUNNER_")) or n in ("GITLAB_CI",)}
    return {
        **blank,
        "KUBECONFIG": "/nonexistent",
        "WARMBUILD_BUILDER": "",
        "WARMBUILD_STATE_FILE": "",
        "WARMBUILD_POOL": "",
        "WARMBUILD_SCHEDULER_TOKEN": "",
        "WARMBUILD_SCHEDULER_TOKEN_FILE": "",
        **extra,
    }


def test_a_fork_pull_request_from_github_builds_on_an_ephemeral_builder_with_cache_import_only(
    scheduler, tmp_path, registry, unique_repo, run_warmbuild, admin
):
    app = tmp_path / "fork-change"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"ARG REGISTRY\nFROM ${{REGISTRY}}/library/python:3.11-slim\nRUN echo {uuid.uuid4().hex} > /planted\n"
    )
    claims = oidc_issuer.github_claims("octo-org/a", "pull_request")
    done = run_warmbuild(
        "build",
        str(app),
        "--pool",
        POOL,
        "--scheduler",
        scheduler.url,
        "--scheduler-ca",
        str(scheduler.setup.ca),
        "--build-arg",
        f"REGISTRY={registry}",
        "--tag",
        f"{unique_repo}:pr",
        "--push",
        "--cache-to",
        f"type=registry,ref={unique_repo}:shared,mode=max",
        "--result-file",
        str(tmp_path / "r.json"),
        "--state-file",
        str(tmp_path / "s.json"),
        env=off_cluster_env(WARMBUILD_SCHEDULER_OIDC_AUDIENCE=AUDIENCE, **github_job(claims)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the scheduler found this build untrusted" in done.stderr
    assert "--cache-to dropped (1 export(s)): an untrusted build never writes a cache" in done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["placement"]["path"] == "ephemeral", result["placement"]
    host, _, repo = unique_repo.partition("/")
    for tag in ("shared", "buildcache"):  # the user's cache export, and warmbuild's own: both absent
        manifest = requests.get(
            f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10
        )
        assert manifest.status_code == 404, tag
    assert requests.get(f"http://{host}/v2/{repo}/tags/list", timeout=10).json()["tags"] == ["pr"]
    assert not (tmp_path / "s.json").exists()  # released: the scheduler deleted the builder


# ---------------------------------------------------------------------- tokens the API server refuses


REFUSED = {
    "wrong-audience": (lambda: mint("github", audience="sts.example.com", **oidc_issuer.github_claims()), "audience"),
    "unknown-issuer": (lambda: mint("unknown", **oidc_issuer.github_claims()), "does not accept this token"),
    "expired": (lambda: mint("github", expires_in=-600, **oidc_issuer.github_claims()), "expired"),
}


def held_by_ci_tokens(admin) -> list[str]:
    leases = admin.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases").body["items"]
    return [i["metadata"]["name"] for i in leases if "@github:" in (i["spec"].get("holderIdentity") or "")]


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_token_the_api_server_refuses_is_one_line_and_exit_6(scheduler, tmp_path, run_warmbuild, admin, case):
    token_of, says = REFUSED[case]
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text("FROM scratch\n")
    done = run_warmbuild(
        "build",
        str(app),
        "--pool",
        POOL,
        "--scheduler",
        scheduler.url,
        "--scheduler-ca",
        str(scheduler.setup.ca),
        "--tag",
        "127.0.0.1:5000/never:x",
        "--result-file",
        str(tmp_path / "r.json"),
        "--state-file",
        str(tmp_path / "s.json"),
        env=off_cluster_env(WARMBUILD_SCHEDULER_TOKEN=token_of()),
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("warmbuild: error: ")]
    assert done.returncode == 6, done.stderr[-2000:]
    assert len(errors) == 1 and "did not accept the token (401)" in errors[0], done.stderr[-2000:]
    assert says in errors[0], errors[0]
    print(f"{case}: {errors[0]}")  # the line a user sees (pytest -rP shows it)
    assert "Traceback" not in done.stderr and "eyJ" not in done.stderr  # no token echoed
    assert not (tmp_path / "s.json").exists() and not held_by_ci_tokens(admin)
