"""The GitHub front door: workflow-command text, inputs → CLI argv, credentials, annotations,
action.yml against build-push-action and the action schema, the OIDC token source (HTTP edge via
`responses`), and the signal guard that keeps cleanup whole."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import responses
import yaml
from responses import matchers

from warmbuild.ci.github import (
    escape_data,
    escape_property,
    group_end,
    group_start,
    heredoc_entry,
    mask_commands,
    workflow_command,
)
from warmbuild.ci.outputs import output_values
from warmbuild.ci.sections import log_section
from warmbuild.entry.github_action import (
    ACTION_INPUTS,
    annotation,
    cluster_access,
    dockerfile_location,
    kubeconfig_secrets,
    private_dir,
    read_inputs,
    remove_stale_copies,
    secrets_to_mask,
)
from warmbuild.entry.inputs import build_invocation, split_list
from warmbuild.errors import Cancelled, ClusterError, InputError
from warmbuild.kube.oidc import GitHubOidcTokenSource, jwt_expiry
from warmbuild.signals import install_cancel_handlers, signals_deferred

ROOT = Path(__file__).resolve().parents[2]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())

# docker/build-push-action v6 action.yml: its inputs and outputs, by name.
BUILD_PUSH_ACTION_INPUTS = {
    "add-hosts",
    "allow",
    "annotations",
    "attests",
    "build-args",
    "build-contexts",
    "builder",
    "cache-from",
    "cache-to",
    "call",
    "cgroup-parent",
    "context",
    "file",
    "labels",
    "load",
    "network",
    "no-cache",
    "no-cache-filters",
    "outputs",
    "platforms",
    "provenance",
    "pull",
    "push",
    "sbom",
    "secrets",
    "secret-envs",
    "secret-files",
    "shm-size",
    "ssh",
    "tags",
    "target",
    "ulimit",
    "github-token",
}
BUILD_PUSH_ACTION_OUTPUTS = {"imageid", "digest", "metadata"}
# Same name, same meaning (and the same value syntax).
SAME_MEANING = {
    "context",
    "file",
    "tags",
    "build-args",
    "secrets",
    "secret-envs",
    "secret-files",
    "target",
    "platforms",
    "labels",
    "push",
    "no-cache",
    "cache-from",
    "cache-to",
}
# Same name, same role, other values: build-push-action's `builder` names a buildx builder
# instance; warmbuild's is a buildkitd address (tcp://HOST:PORT). Both say where BuildKit runs.
SAME_ROLE = {"builder"}


# --- workflow commands -------------------------------------------------------------------------


def test_escaping_follows_the_runner_rules():
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("Dockerfile:5,x%") == "Dockerfile%3A5%2Cx%25"
    assert workflow_command("error", "a:b,c\nd", title="warm,build", file="app/Dockerfile", line=5, col=None) == (
        "::error title=warm%2Cbuild,file=app/Dockerfile,line=5::a:b,c%0Ad"
    )
    assert workflow_command("endgroup") == "::endgroup::"
    assert group_start("Build on tcp://127.0.0.2:1234") == "::group::Build on tcp://127.0.0.2:1234"
    assert group_end() == "::endgroup::"


def test_masks_cover_the_value_and_each_line_of_a_multiline_secret():
    assert mask_commands("") == []
    assert mask_commands("  s3cr%t  ") == ["::add-mask::s3cr%25t"]
    key = "-----BEGIN KEY-----\nAAAAbbbbCCCC\n}\n-----END KEY-----"
    lines = mask_commands(key)
    assert lines[0] == "::add-mask::" + escape_data(key)
    assert "::add-mask::AAAAbbbbCCCC" in lines and "::add-mask::}" not in lines


def test_state_uses_the_heredoc_file_command_format():
    entry = heredoc_entry("state-file", "/github/home/.warmbuild/state-x.json")
    first, value, last, rest = entry.split("\n")
    name, delimiter = first.split("<<")
    assert (name, value, last, rest) == ("state-file", "/github/home/.warmbuild/state-x.json", delimiter, "")


def test_log_sections_per_platform():
    for environ, start, end in (
        ({"GITHUB_ACTIONS": "true"}, "::group::Build", "::endgroup::"),
        ({"GITLAB_CI": "true"}, "section_start:", "section_end:"),
    ):
        log = io.StringIO()
        with pytest.raises(RuntimeError):
            with log_section(log, environ, "warmbuild_build", "Build"):
                print("inside", file=log)
                raise RuntimeError("the end marker is printed anyway")
        first, inside, last, _ = log.getvalue().split("\n")  # GitLab's markers hold a \r
        assert start in first and inside == "inside" and end in last
    log = io.StringIO()
    with log_section(log, {}, "warmbuild_build", "Build"):
        print("inside", file=log)
    assert log.getvalue() == "inside\n"


# --- inputs ------------------------------------------------------------------------------------


def test_inputs_are_read_with_hyphens_kept_and_upper_cased():
    inputs = read_inputs({"INPUT_BUILD-ARGS": "A=1", "INPUT_NO-CACHE": "true", "INPUT_build-args": "wrong"})
    assert inputs["build-args"] == "A=1" and inputs["no-cache"] == "true"
    assert set(inputs) == set(ACTION_INPUTS)


def test_inputs_map_to_the_cli_argv_like_build_push_action():
    invocation = build_invocation(
        {
            "context": "app",
            "file": "app/Dockerfile.gpu",
            "tags": "r/app:1, r/app:latest\nr/app:sha",
            "build-args": "A=1\nLIST=x,y\n",
            "labels": "team=ml",
            "platforms": "linux/amd64,linux/arm64",
            "push": "TRUE",
            "no-cache": "false",
            "cache-from": "r/app:cache\ntype=registry,ref=r/app:main",
            "cache-to": "type=registry,ref=r/app:cache,mode=max",
            "secret-envs": "hf=HF_TOKEN,gh=GH_TOKEN",
            "secret-files": "netrc=/home/me/.netrc",
            "pool": "gpu",
            "max-wait": "30",
            "namespace": "builds",
            "target": "-odd",
            "fallback": "ephemeral",
            "scheduler": "https://127.0.0.1:8443",
        }
    )
    assert invocation.argv("--state-file=s.json") == [
        "build",
        "--file=app/Dockerfile.gpu",
        "--target=-odd",
        "--pool=gpu",
        "--namespace=builds",
        "--scheduler=https://127.0.0.1:8443",
        "--tag=r/app:1",
        "--tag=r/app:latest",
        "--tag=r/app:sha",
        "--platform=linux/amd64",
        "--platform=linux/arm64",
        "--build-arg=A=1",
        "--build-arg=LIST=x,y",
        "--label=team=ml",
        "--cache-from=r/app:cache",
        "--cache-from=type=registry,ref=r/app:main",  # build_request reads a bare ref
        "--cache-to=type=registry,ref=r/app:cache,mode=max",
        "--push",
        "--max-wait=30",
        "--fallback=ephemeral",
        "--secret=id=hf,env=HF_TOKEN",
        "--secret=id=gh,env=GH_TOKEN",
        "--secret=id=netrc,src=/home/me/.netrc",
        "--state-file=s.json",
        "--",
        "app",
    ]
    assert invocation.env == ()
    # The same argv parses with the CLI's own parser: one code path.
    from warmbuild.cli import make_parser

    args = make_parser().parse_args(invocation.argv())
    assert args.context == "app" and args.target == "-odd" and args.build_args == ["A=1", "LIST=x,y"] and args.push


def test_inline_secret_values_go_through_the_environment_never_argv():
    invocation = build_invocation({"secrets": "token=abc,=def\nother=second"})
    assert invocation.env == (("WARMBUILD_SECRET_0", "abc,=def"), ("WARMBUILD_SECRET_1", "second"))
    assert "abc,=def" not in " ".join(invocation.argv())
    assert "--secret=id=token,env=WARMBUILD_SECRET_0" in invocation.argv()
    with pytest.raises(InputError) as err:
        build_invocation({"secrets": "no-separator-s3cret"})
    assert "s3cret" not in err.value.message and "item 1" in err.value.message


def test_retries_input_becomes_the_flag():
    assert "--retries=2" in build_invocation({"retries": "2"}).flags
    assert not any(flag.startswith("--retries") for flag in build_invocation({}).flags)


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        ({"push": "yes"}, "input 'push' is 'yes': write true or false"),
        ({"max-wait": "soon"}, "input 'max-wait' is 'soon'"),
        ({"retries": "-1"}, "input 'retries' is '-1': write a whole number"),
        ({"fallback": "maybe"}, "input 'fallback' is 'maybe': write one of auto, wait, ephemeral, fail"),
        ({"secret-envs": "hf"}, "input 'secret-envs', item 1: write id=ENV_VARIABLE"),
    ],
)
def test_bad_inputs_are_one_line(inputs, fragment):
    with pytest.raises(InputError) as err:
        build_invocation(inputs)
    assert fragment in err.value.message and "\n" not in err.value.message


def test_list_splitting():
    assert split_list(" a, b \n\nc ", commas=True) == ["a", "b", "c"]
    assert split_list("A=x,y\n B=2 ", commas=False) == ["A=x,y", "B=2"]


# --- credentials -------------------------------------------------------------------------------

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", certificate-authority-data: Q0E=}}]
users:
- name: ci
  user: {token: tok-123456, client-key-data: a2V5LWRhdGE=}
- name: oidc
  user: {auth-provider: {name: oidc, config: {id-token: idt-98765, refresh-token: rft-4321}}}
contexts: [{name: x, context: {cluster: c, user: ci}}]
"""


def test_kubeconfig_secrets_are_found_for_masking():
    assert sorted(kubeconfig_secrets(KUBECONFIG)) == sorted(["tok-123456", "a2V5LWRhdGE=", "idt-98765", "rft-4321"])
    assert kubeconfig_secrets("not: [valid") == ["not: [valid"]
    masked = secrets_to_mask({"token": "t0ken", "kubeconfig": KUBECONFIG, "secrets": "a=1st\nb=2nd"})
    assert {"t0ken", "tok-123456", "1st", "2nd"} <= set(masked)


EXEC_KUBECONFIG = """
clusters: [{name: c, cluster: {server: https://127.0.0.1:6443}}]
users:
- name: eks
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: aws
      args: [eks, get-token, --cluster-name, prod]
      env:
      - {name: AWS_ACCESS_KEY_ID, value: AKIAEXAMPLE123}
      - {name: AWS_SECRET_ACCESS_KEY, value: "wJalr/EXAMPLEKEY+secret"}
      - {name: AWS_PROFILE}
contexts: [{name: x, context: {cluster: c, user: eks}}]
"""


def test_exec_plugin_env_values_are_masked_like_tokens():
    assert sorted(kubeconfig_secrets(EXEC_KUBECONFIG)) == ["AKIAEXAMPLE123", "wJalr/EXAMPLEKEY+secret"]
    assert {"AKIAEXAMPLE123", "wJalr/EXAMPLEKEY+secret"} <= set(secrets_to_mask({"kubeconfig": EXEC_KUBECONFIG}))


def test_the_kubeconfig_copy_lives_under_runner_temp_and_stale_copies_go(tmp_path):
    runner_temp = tmp_path / "_temp"
    runner_temp.mkdir()
    private = private_dir({"RUNNER_TEMP": str(runner_temp), "HOME": str(tmp_path / "home")})
    assert private == runner_temp / "warmbuild" and oct(private.stat().st_mode & 0o777) == "0o700"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (private / f"kubeconfig-{dead.pid}").write_text("left by a SIGKILLed main step")
    (private / f"kubeconfig-{os.getpid()}").write_text("a live run's copy")
    (private / "state-build.json").write_text("{}")
    assert remove_stale_copies(private) == [private / f"kubeconfig-{dead.pid}"]
    assert sorted(p.name for p in private.iterdir()) == [f"kubeconfig-{os.getpid()}", "state-build.json"]
    (private / f"kubeconfig-{dead.pid}").write_text("again")
    private_dir({"RUNNER_TEMP": str(runner_temp)})  # every run cleans up on its way in
    assert not (private / f"kubeconfig-{dead.pid}").exists()
    # Without RUNNER_TEMP, or with one that is not mounted here: $HOME/.warmbuild, as before.
    assert private_dir({"HOME": str(tmp_path / "home")}) == tmp_path / "home" / ".warmbuild"
    unmounted = {"RUNNER_TEMP": str(tmp_path / "host" / "_temp"), "HOME": str(tmp_path / "home")}
    assert private_dir(unmounted) == tmp_path / "home" / ".warmbuild"


def test_cluster_access_from_inputs():
    assert cluster_access({}).env == () and cluster_access({}).kubeconfig is None
    assert cluster_access({"kubeconfig": KUBECONFIG}).kubeconfig == KUBECONFIG
    token = cluster_access({"server": "https://127.0.0.1:6443", "token": "t", "certificate-authority-data": "Q0E="})
    assert dict(token.env) == {
        "WARMBUILD_K8S_SERVER": "https://127.0.0.1:6443",
        "WARMBUILD_K8S_TOKEN": "t",
        "WARMBUILD_K8S_CA_DATA": "Q0E=",
    }
    assert dict(cluster_access({"scheduler": "https://127.0.0.1:8443", "token": "sa"}).env) == {
        "WARMBUILD_SCHEDULER_TOKEN": "sa"
    }
    # Off the cluster: the scheduler and the job's own OIDC token, nothing else.
    assert dict(cluster_access({"scheduler": "https://sched", "oidc-audience": "warmbuild-scheduler"}).env) == {
        "WARMBUILD_SCHEDULER_OIDC_AUDIENCE": "warmbuild-scheduler"
    }
    oidc = cluster_access({"server": "https://127.0.0.1:6443", "oidc-audience": "warmbuild"})
    assert dict(oidc.env)["WARMBUILD_K8S_OIDC_AUDIENCE"] == "warmbuild"
    for bad, fragment in (
        ({"kubeconfig": KUBECONFIG, "server": "https://127.0.0.1:6443"}, "not both"),
        ({"token": "t"}, "input 'token' needs input 'server'"),
        ({"server": "https://127.0.0.1:6443"}, "exactly one of"),
        ({"server": "https://127.0.0.1:6443", "token": "t", "oidc-audience": "a"}, "exactly one of"),
        ({"server": "https://127.0.0.1:6443", "token": "t", "certificate-authority-data": "not base64!"}, "not base64"),
        ({"scheduler": "https://127.0.0.1:8443", "kubeconfig": KUBECONFIG}, "with input 'scheduler'"),
        ({"scheduler": "https://127.0.0.1:8443", "token": "t", "oidc-audience": "a"}, "not both"),
    ):
        with pytest.raises(InputError) as err:
            cluster_access(bad)
        assert fragment in err.value.message


# --- annotations -------------------------------------------------------------------------------

BUILDKIT_ERROR = """#7 ERROR: process "/bin/sh -c exit 3" did not complete successfully: exit code: 3
Dockerfile.gpu:5
--------------------
   4 |     COPY app.py /app/
   5 | >>> RUN exit 3
--------------------
error: failed to solve: process "/bin/sh -c exit 3" did not complete successfully: exit code: 3""".splitlines()


def test_the_dockerfile_line_buildkit_names_becomes_the_annotation(tmp_path):
    assert dockerfile_location(BUILDKIT_ERROR) == ("Dockerfile.gpu", 5)
    assert dockerfile_location(["Dockerfile:5", "no rule below"]) is None
    workspace = tmp_path
    (workspace / "app").mkdir()
    dockerfile = workspace / "app" / "Dockerfile.gpu"
    line = annotation("step failed: exit code: 3", ("Dockerfile.gpu", 5), dockerfile, workspace)
    assert line == "::error title=warmbuild,file=app/Dockerfile.gpu,line=5::step failed: exit code: 3"
    # Another file's location, or a Dockerfile outside the workspace: no file/line.
    assert annotation("x", ("Other", 5), dockerfile, workspace) == "::error title=warmbuild::x"
    assert (
        annotation("x", ("Dockerfile.gpu", 5), Path("/elsewhere/Dockerfile.gpu"), workspace)
        == "::error title=warmbuild::x"
    )


def _run_entrypoint(stage: str, env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "WARMBUILD_", "GITHUB_", "KUBECONFIG"))}
    return subprocess.run(
        [sys.executable, "-m", "warmbuild.entry.github_action", stage],
        env={**base, "HOME": str(tmp_path), "GITHUB_ACTIONS": "true", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )


def test_bad_input_fails_the_step_with_one_annotation_after_the_masks(tmp_path):
    done = _run_entrypoint("main", {"INPUT_TOKEN": "s3cr3t-value", "INPUT_PUSH": "maybe"}, tmp_path)
    assert done.returncode == 2
    lines = done.stdout.splitlines()
    assert lines[0] == "::add-mask::s3cr3t-value"
    assert lines[1:] == [
        "::error title=warmbuild input::warmbuild: input 'token' needs input 'server' (the API server URL)"
    ]
    assert "s3cr3t-value" not in done.stderr


def test_post_without_state_has_nothing_to_do(tmp_path):
    done = _run_entrypoint("post", {"STATE_state-file": str(tmp_path / "missing.json")}, tmp_path)
    assert done.returncode == 0 and "no slot to release" in done.stdout


# --- action.yml --------------------------------------------------------------------------------


def test_action_inputs_are_exactly_the_ones_the_entrypoint_reads():
    assert set(ACTION["inputs"]) == set(ACTION_INPUTS)


def test_action_input_names_match_build_push_action_where_they_overlap():
    ours = set(ACTION["inputs"])
    assert ours & BUILD_PUSH_ACTION_INPUTS == SAME_MEANING | SAME_ROLE
    assert BUILD_PUSH_ACTION_OUTPUTS <= set(ACTION["outputs"])


def test_action_outputs_are_the_ones_published():
    from warmbuild.buildkit.progress import CacheStats
    from warmbuild.report import BuildResult, Placement, Timings

    result = BuildResult("success", Placement("tcp://127.0.0.2:1234", "direct"), Timings(), CacheStats(0, 0))
    published = output_values(result, {"image": {}})
    assert set(ACTION["outputs"]) == set(published)


def test_action_is_a_docker_action_with_a_post_step_and_valid_by_schema():
    import jsonschema

    runs = ACTION["runs"]
    assert runs["using"] == "docker" and runs["image"] == "Dockerfile"
    assert runs["entrypoint"] == "/usr/local/bin/warmbuild-github-main"
    assert runs["post-entrypoint"] == "/usr/local/bin/warmbuild-github-post"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "exec python -m warmbuild.entry.github_action main" in dockerfile
    assert "exec python -m warmbuild.entry.github_action post" in dockerfile
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "github-actions.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in validator.iter_errors(ACTION)] == []
    assert list(validator.iter_errors({**ACTION, "runs": {**runs, "using": "dockr"}}))  # the schema does check


# --- OIDC token source (HTTP edge) -------------------------------------------------------------

TOKEN_URL = "http://127.0.0.1:9/_apis/token?api-version=2.0"  # as the runner hands it out
TOKEN_ENDPOINT = "http://127.0.0.1:9/_apis/token"
AUDIENCE_QUERY = [matchers.query_param_matcher({"api-version": "2.0", "audience": "warmbuild"})]


def jwt(exp: float) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'exp': exp, 'aud': 'warmbuild'})}.sig"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@responses.activate
def test_oidc_token_is_minted_for_the_audience_and_reminted_before_expiry():
    clock = Clock(1_000_000.0)
    first, second = jwt(clock.now + 300), jwt(clock.now + 600)
    responses.get(TOKEN_ENDPOINT, json={"value": first}, match=AUDIENCE_QUERY)
    responses.get(TOKEN_ENDPOINT, json={"value": second}, match=AUDIENCE_QUERY)
    source = GitHubOidcTokenSource(TOKEN_URL, "request-token", "warmbuild", clock=clock)
    assert source.token() == first
    call = responses.calls[0].request
    assert call.headers["Authorization"] == "Bearer request-token"
    assert "api-version=2.0" in call.url and "audience=warmbuild" in call.url
    clock.now += 200  # 100 s left: still good
    assert source.token() == first and len(responses.calls) == 1
    clock.now += 50  # 50 s left, inside the 60 s margin: mint again
    assert source.token() == second and len(responses.calls) == 2
    assert jwt_expiry(second) == 1_000_600.0 and jwt_expiry("not-a-jwt") is None


@responses.activate
def test_cluster_client_sends_a_reminted_bearer_token_once_the_first_nears_expiry(monkeypatch):
    from warmbuild.kube import client as cluster
    from warmbuild.kube import oidc

    clock = Clock(2_000_000.0)
    monkeypatch.setattr(oidc, "now", clock)
    first, second = jwt(clock.now + 120), jwt(clock.now + 900)
    responses.get(TOKEN_ENDPOINT, json={"value": first}, match=AUDIENCE_QUERY)
    responses.get(TOKEN_ENDPOINT, json={"value": second}, match=AUDIENCE_QUERY)
    client = cluster._from_env(
        {
            "WARMBUILD_K8S_SERVER": "https://127.0.0.1:6443",
            "WARMBUILD_K8S_OIDC_AUDIENCE": "warmbuild",
            "ACTIONS_ID_TOKEN_REQUEST_URL": TOKEN_URL,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-token",
        }
    )
    assert client.credentials.authorization() == f"Bearer {first}"
    clock.now += 90  # past the refresh margin of the first token
    assert client.credentials.authorization() == f"Bearer {second}"
    assert len(responses.calls) == 2


@responses.activate
def test_oidc_refusal_and_missing_permission_are_one_line():
    responses.get(TOKEN_ENDPOINT, status=403, body="secret details", match=AUDIENCE_QUERY)
    with pytest.raises(ClusterError) as err:
        GitHubOidcTokenSource(TOKEN_URL, "t", "warmbuild").token()
    assert "HTTP 403" in err.value.message and "id-token: write" in err.value.message
    assert "secret details" not in err.value.message
    responses.replace(responses.GET, TOKEN_ENDPOINT, json={"no": "value"}, match=AUDIENCE_QUERY)
    with pytest.raises(ClusterError, match="no token"):
        GitHubOidcTokenSource(TOKEN_URL, "t", "warmbuild").token()
    with pytest.raises(ClusterError, match="id-token: write"):
        GitHubOidcTokenSource.from_env({}, "warmbuild")


# --- the signal guard around cleanup -----------------------------------------------------------


@pytest.fixture
def cancel_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    install_cancel_handlers()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_signal_during_cleanup_is_raised_only_after_it(cancel_handlers):
    steps = []
    with pytest.raises(Cancelled) as err:
        with signals_deferred():
            steps.append("release started")
            os.kill(os.getpid(), signal.SIGTERM)
            with signals_deferred():  # nested: still deferred until the outer block ends
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("inner done")
            steps.append("release finished")
    assert steps == ["release started", "inner done", "release finished"]
    assert err.value.exit_code == 128 + signal.SIGTERM  # the first signal
    with pytest.raises(Cancelled):  # and the normal handler is back
        os.kill(os.getpid(), signal.SIGHUP)


def test_an_error_in_cleanup_wins_over_a_deferred_signal(cancel_handlers):
    with pytest.raises(ValueError):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            raise ValueError("release failed")
    with signals_deferred():
        pass  # nothing pending from before
