"""The CI front doors on the real testbed: the step image, the GitHub action's entry points, the
GitLab component's job and the Jenkins pipeline from docs/jenkins.md, each run as that platform
would run it (its environment, its files), building through the real pool or builder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from junitparser import JUnitXml
from prometheus_client.parser import text_string_to_metric_families

from warmbuild.kube.client import connect
from warmbuild.pool.leases import list_pool_leases

ROOT = Path(__file__).resolve().parents[2]
POOL = os.environ.get("WARMBUILD_POOL", "default")
NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


# --- helpers -----------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict:
    """This machine's environment without CI markers, credentials or a default builder."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GITHUB_", "GITLAB_", "INPUT_", "STATE_", "CI_", "WARMBUILD_INPUT_"))
        and k not in ("CI", "KUBECONFIG", "WARMBUILD_BUILDER", "WARMBUILD_POOL")
    }
    # `python` and `warmbuild` resolve to this test run's installation, as in the step image.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def heredoc_values(text: str) -> dict[str, str]:
    """Parse a GitHub file-command file (`name<<DELIM` … `DELIM`)."""
    values, lines = {}, text.split("\n")
    i = 0
    while i < len(lines):
        if "<<" in lines[i]:
            name, delimiter = lines[i].split("<<", 1)
            end = lines.index(delimiter, i + 1)
            values[name] = "\n".join(lines[i + 1 : end])
            i = end
        i += 1
    return values


def registry_digest(reference: str) -> str:
    host, _, rest = reference.partition("/")
    repo, _, tag = rest.rpartition(":")
    response = requests.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10)
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]


def slots_held_by_pid(pid: int) -> list[str]:
    admin = connect(os.environ["KUBECONFIG"])
    return [name for name, lease in list_pool_leases(admin, NAMESPACE, POOL).items() if f"/{pid}/" in lease.holder]


@pytest.fixture
def workspace(tmp_path, registry) -> Path:
    """A checkout with two Dockerfiles: one that builds and one whose line 5 fails."""
    root = tmp_path / "workspace"
    app = root / "app"
    app.mkdir(parents=True)
    base = os.environ["WARMBUILD_BASE_IMAGE"]
    (app / "app.py").write_text(f'print("front door {uuid.uuid4().hex}")\n')
    (app / "Dockerfile").write_text(f'FROM {base}\nWORKDIR /app\nCOPY app.py /app/\nCMD ["python", "/app/app.py"]\n')
    (app / "Dockerfile.failing").write_text(
        f"FROM {base}\nWORKDIR /app\nCOPY app.py /app/\n# line 4\nRUN echo checking; echo model.bin is missing >&2; exit 3\n"
    )
    return root


# --- the step image ----------------------------------------------------------------------------


def test_step_image_builds_from_the_local_registry_non_root_with_exec_form_entrypoint(
    run_warmbuild, registry, tmp_path
):
    buildctl = os.environ["WARMBUILD_BUILDCTL"]
    # The testbed's buildctl stands in for moby/buildkit:v0.34.2 (the same version, built from source).
    stand_in = tmp_path / "buildkit-image"
    stand_in.mkdir()
    shutil.copy(buildctl, stand_in / "buildctl")
    (stand_in / "Dockerfile").write_text("FROM scratch\nCOPY buildctl /usr/bin/buildctl\n")
    buildkit_image = f"{registry}/moby/buildkit:v0.34.2"
    done = run_warmbuild(
        "build", str(stand_in), "--tag", buildkit_image, "--push", "--result-file", str(tmp_path / "bk.json")
    )
    assert done.returncode == 0, done.stderr

    tag = f"{registry}/warmbuild-tests/step-{uuid.uuid4().hex[:10]}:test"
    build_args = [
        "--build-arg",
        f"PYTHON_IMAGE={registry}/library/python:3.11-slim",
        "--build-arg",
        f"BUILDKIT_IMAGE={buildkit_image}",
    ]
    done = run_warmbuild(
        "build", str(ROOT), *build_args, "--tag", tag, "--push", "--result-file", str(tmp_path / "step.json")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "step.json").read_text())
    context_step = next(s for s in result["steps"] if s["name"].startswith("[internal] load build context"))
    assert context_step["error"] is None

    # The image config, from the registry's manifest and config blob.
    host, _, rest = tag.partition("/")
    repo, _, reference = rest.rpartition(":")
    manifest = requests.get(
        f"http://{host}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES}, timeout=10
    ).json()
    config = requests.get(f"http://{host}/v2/{repo}/blobs/{manifest['config']['digest']}", timeout=10).json()["config"]
    assert config["User"] == "1001:1001"
    assert config["Entrypoint"] == ["/opt/warmbuild/bin/warmbuild"]  # exec form: a list, no shell
    assert config["Cmd"] == ["--help"]
    assert any(e.startswith("PATH=/opt/warmbuild/bin:") for e in config["Env"])

    # The filesystem of the pushed image (FROM its digest), exported by buildctl, run as its user.
    # (A tar export: `type=local` of this ~450 MB tree stalled now and then on the loaded testbed.)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    (pulled / "Dockerfile").write_text(f"FROM {host}/{repo}@{result['image']['digest']}\n")
    export = subprocess.run(
        [
            buildctl,
            "--addr",
            os.environ["WARMBUILD_BUILDER"],
            "build",
            "--progress=plain",
            "--frontend=dockerfile.v0",
            "--local",
            f"context={pulled}",
            "--local",
            f"dockerfile={pulled}",
            "--output",
            f"type=tar,dest={tmp_path / 'rootfs.tar'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    subprocess.run(["tar", "-xf", str(tmp_path / "rootfs.tar"), "-C", str(rootfs)], check=True, timeout=120)
    for executable in (
        "usr/local/bin/buildctl",
        "usr/local/bin/warmbuild-github-main",
        "usr/local/bin/warmbuild-github-post",
    ):
        assert os.access(rootfs / executable, os.X_OK), executable
    assert (
        hashlib.sha256((rootfs / "usr/local/bin/buildctl").read_bytes()).digest()
        == hashlib.sha256(Path(buildctl).read_bytes()).digest()
    )
    site = next(rootfs.glob("opt/warmbuild/lib/python3*/site-packages"))
    assert (site / "warmbuild" / "entry" / "github_action.py").is_file()
    assert not (rootfs / "src").exists() and not (site / "tests").exists() and not (site / "testbed").exists()
    assert os.geteuid() == 0, "chroot needs root (CI and the testbed run as root)"

    def in_image(*argv: str) -> str:
        done = subprocess.run(
            [shutil.which("chroot"), "--userspec=1001:1001", str(rootfs), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/opt/warmbuild/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/home/warmbuild"},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    assert in_image("/opt/warmbuild/bin/warmbuild", "--version").strip() == "warmbuild 0.1.0"
    assert "v0.34.2" in in_image("/usr/local/bin/buildctl", "--version")
    assert (
        in_image(
            "python", "-c", "import warmbuild.entry.github_action, warmbuild.entry.gitlab_job; print('ok')"
        ).strip()
        == "ok"
    )


# --- GitHub ------------------------------------------------------------------------------------


class GitHubRunner:
    """The files and variables a runner hands a container action's main and post steps."""

    def __init__(self, root: Path, workspace: Path):
        self.root, self.workspace = root, workspace
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.temp = root / "_temp"  # RUNNER_TEMP, mounted into a container action as /github/runner_temp
        self.temp.mkdir()
        self.files = {name: root / name for name in ("output", "state", "summary")}
        for path in self.files.values():
            path.touch()

    def env(self, inputs: dict[str, str], **extra: str) -> dict:
        env = clean_env(
            GITHUB_ACTIONS="true",
            CI="true",
            HOME=str(self.home),
            RUNNER_TEMP=str(self.temp),
            GITHUB_WORKSPACE=str(self.workspace),
            GITHUB_OUTPUT=str(self.files["output"]),
            GITHUB_STATE=str(self.files["state"]),
            GITHUB_STEP_SUMMARY=str(self.files["summary"]),
            GITHUB_ACTION="build",
            GITHUB_REPOSITORY="acme/app",
            GITHUB_RUN_ID="4242",
            GITHUB_SERVER_URL="http://127.0.0.1:9",
        )
        env.update({f"INPUT_{name.upper()}": value for name, value in inputs.items()})
        env.update(extra)
        return env

    def run(self, stage: str, env: dict) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "warmbuild.entry.github_action", stage],
            env=env,
            cwd=self.workspace,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )


def test_github_action_builds_through_the_pool_with_a_kubeconfig_input(tmp_path, workspace, registry):
    runner = GitHubRunner(tmp_path / "runner", workspace)
    kubeconfig = Path(os.environ["WARMBUILD_CI_KUBECONFIG"]).read_text()
    token = yaml.safe_load(kubeconfig)["users"][0]["user"]["token"]
    tag = f"{registry}/warmbuild-tests/gh-{uuid.uuid4().hex[:10]}:sha"
    inputs = {
        "context": "app",
        "tags": tag,
        "push": "true",
        "pool": POOL,
        "namespace": NAMESPACE,
        "kubeconfig": kubeconfig,
        "max-wait": "30",
        "labels": "org.opencontainers.image.source=http://127.0.0.1:9/acme/app",
    }
    main = runner.run("main", runner.env(inputs))
    assert main.returncode == 0, main.stderr[-3000:]
    assert main.stdout.splitlines()[0] == f"::add-mask::{token}"
    assert token not in main.stderr
    # One foldable group per phase, closed, and the result table outside them.
    log = main.stderr.splitlines()
    starts = [line for line in log if line.startswith("::group::")]
    assert starts[0].startswith("::group::Placement: a slot in pool") and starts[1].startswith(
        "::group::Build on tcp://127.0.0."
    )
    assert log.count("::endgroup::") == len(starts) == 2
    assert log.index("warmbuild: success") > max(i for i, line in enumerate(log) if line == "::endgroup::")

    outputs = heredoc_values(runner.files["output"].read_text())
    assert outputs["digest"] == registry_digest(tag)
    assert outputs["path"] in ("warm", "spill") and outputs["builder"].startswith("tcp://127.0.0.")
    assert json.loads(outputs["metadata"])["pushed"] is True
    assert float(outputs["total-seconds"]) >= float(outputs["build-seconds"]) > 0
    summary = runner.files["summary"].read_text()
    assert "warmbuild: success" in summary and "| phase | time |" in summary and "| placement |" in summary

    state_file = Path(heredoc_values(runner.files["state"].read_text())["state-file"])
    assert state_file.parent == runner.temp / "warmbuild"  # not in the workspace, the build context
    assert not state_file.exists(), "main released the slot itself"
    assert not list((runner.temp / "warmbuild").glob("kubeconfig-*")), "the kubeconfig input is not left on disk"
    assert not list(workspace.rglob("*state*.json"))
    post = runner.run("post", runner.env(inputs, **{"STATE_state-file": str(state_file)}))
    assert post.returncode == 0 and "no slot to release" in post.stdout


def test_github_action_annotates_the_failing_dockerfile_line_and_releases(tmp_path, workspace):
    runner = GitHubRunner(tmp_path / "runner", workspace)
    kubeconfig = yaml.safe_load(Path(os.environ["WARMBUILD_CI_KUBECONFIG"]).read_text())
    inputs = {
        "context": "app",
        "file": "app/Dockerfile.failing",
        "pool": POOL,
        "namespace": NAMESPACE,
        "server": kubeconfig["clusters"][0]["cluster"]["server"],
        "certificate-authority-data": kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"],
        "token": kubeconfig["users"][0]["user"]["token"],
    }
    main = runner.run("main", runner.env(inputs))
    assert main.returncode == 1, main.stderr[-3000:]
    annotations = [line for line in main.stdout.splitlines() if line.startswith("::error ")]
    assert len(annotations) == 1
    assert annotations[0].startswith("::error title=warmbuild,file=app/Dockerfile.failing,line=5::step '")
    assert "exit code: 3" in annotations[0]
    state_file = Path(heredoc_values(runner.files["state"].read_text())["state-file"])
    assert not state_file.exists()
    assert json.loads((workspace / "build-result.json").read_text())["status"] == "failed"


def test_github_post_step_releases_the_slot_of_a_killed_main_step(tmp_path, workspace):
    runner = GitHubRunner(tmp_path / "runner", workspace)
    marker = f"wb-post-{uuid.uuid4().hex[:10]}"
    (workspace / "app" / "Dockerfile").write_text(
        f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN echo {marker} && sleep 60\n"
    )
    inputs = {
        "context": "app",
        "pool": POOL,
        "namespace": NAMESPACE,
        "kubeconfig": Path(os.environ["WARMBUILD_CI_KUBECONFIG"]).read_text(),
    }
    main = subprocess.Popen(
        [sys.executable, "-m", "warmbuild.entry.github_action", "main"],
        env=runner.env(inputs),
        cwd=workspace,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (slots_held_by_pid(main.pid) and _running(marker)):
            assert time.monotonic() < deadline and main.poll() is None, "the build did not start"
            time.sleep(0.2)
        main.kill()  # no chance to clean up: the runner's SIGKILL after its grace period
        main.wait()
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
    assert slots_held_by_pid(main.pid), "the slot is still held after SIGKILL"
    state_file = heredoc_values(runner.files["state"].read_text())["state-file"]
    post = runner.run("post", runner.env(inputs, **{"STATE_state-file": state_file}))
    assert post.returncode == 0, post.stderr
    assert "warmbuild: released slot" in post.stderr and "::warning" not in post.stdout
    assert slots_held_by_pid(main.pid) == []
    assert not Path(state_file).exists()
    # SIGKILL gave main no chance to stop its buildctl (it runs in its own session); in the action's
    # container it dies with PID 1. Here, end that orphan, which this test started, by its PID.
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"context={workspace / 'app'}".encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue


# --- GitLab ------------------------------------------------------------------------------------


def gitlab_job(inputs: dict[str, object]) -> tuple[dict, dict[str, str]]:
    """The component's job as GitLab would create it: inputs checked and interpolated."""
    header, jobs = yaml.safe_load_all((ROOT / "gitlab/templates/build.yml").read_text())
    spec = header["spec"]["inputs"]
    values = {}
    for name, definition in spec.items():
        if name not in inputs and "default" not in definition:
            raise AssertionError(f"input {name} is required")
        value = inputs.get(name, definition.get("default"))
        kind = definition.get("type", "string")
        assert isinstance(value, {"string": str, "boolean": bool, "number": (int, float)}[kind]), name
        if "options" in definition:
            assert value in definition["options"], name
        if "regex" in definition:
            assert re.fullmatch(definition["regex"], str(value)), name
        values[name] = str(value).lower() if isinstance(value, bool) else str(value)

    def interpolate(node):
        if isinstance(node, str):
            return re.sub(r"\$\[\[\s*inputs\.([A-Za-z0-9_-]+)\s*\]\]", lambda m: values[m[1]], node)
        if isinstance(node, list):
            return [interpolate(n) for n in node]
        if isinstance(node, dict):
            return {interpolate(k): interpolate(v) for k, v in node.items()}
        return node

    jobs = interpolate(jobs)
    (job,) = jobs.values()
    return job, {k: str(v) for k, v in job["variables"].items()}


def run_gitlab_lines(lines: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """Run script lines as the runner does (one shell, stop at the first failure); keep \r as is."""
    script = "\n".join(lines)
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def test_gitlab_component_job_builds_and_reports(tmp_path, workspace, registry):
    tag = f"{registry}/warmbuild-tests/gl-{uuid.uuid4().hex[:10]}:abc123"
    job, variables = gitlab_job(
        {
            "image": "127.0.0.1:5000/tools/warmbuild:0.1.0",
            "context": "app",
            "tags": tag,
            "push": True,
            "pool": POOL,
            "namespace": NAMESPACE,
            "max-wait": 30,
            "build-args": "GREETING=hello world\nEMPTY=",
        }
    )
    env = clean_env(
        CI="true",
        GITLAB_CI="true",
        CI_JOB_URL="http://127.0.0.1:9/acme/app/-/jobs/7",
        CI_JOB_ID=f"7{uuid.uuid4().int % 10**8}",
        CI_PROJECT_DIR=str(workspace),
        CI_PROJECT_PATH="acme/app",
        CI_COMMIT_SHORT_SHA="abc123",
        KUBECONFIG=os.environ["WARMBUILD_CI_KUBECONFIG"],
    )
    env.update(variables)
    script = run_gitlab_lines(job["script"], env, workspace)
    assert script.returncode == 0, script.stderr[-3000:]
    after = run_gitlab_lines(job["after_script"], env, workspace)
    assert after.returncode == 0 and "nothing to release" in after.stderr
    assert f"state-gitlab-{env['CI_JOB_ID']}.json holds no slot" in after.stderr  # the file the build used
    assert not list(workspace.rglob("*state*.json"))  # nothing in the project directory, the build context

    log = script.stderr
    for section in ("warmbuild_placement", "warmbuild_build"):
        assert re.search(rf"\x1b\[0Ksection_start:\d+:{section}\[collapsed=true\]\r\x1b\[0K", log), section
        assert re.search(rf"\x1b\[0Ksection_end:\d+:{section}\r\x1b\[0K", log), section

    reports = job["artifacts"]["reports"]
    dotenv = dict(line.split("=", 1) for line in (workspace / reports["dotenv"]).read_text().splitlines())
    assert dotenv["IMAGE_DIGEST"] == registry_digest(tag)
    assert dotenv["BUILD_PATH"] in ("warm", "spill") and dotenv["BUILDER"].startswith("tcp://127.0.0.")

    (suite,) = list(JUnitXml.fromfile(str(workspace / reports["junit"])))
    cases = {case.name: case for case in suite}
    assert list(cases) == ["queue", "startup", "context", "build", "export", "push"]
    assert all(case.is_passed for case in cases.values())
    assert cases["build"].time > 0 and cases["push"].time <= cases["export"].time
    assert abs(suite.time - float(dotenv["TOTAL_SECONDS"])) < 0.01

    families = {f.name: f for f in text_string_to_metric_families((workspace / reports["metrics"]).read_text())}
    assert families["warmbuild_build_success"].samples[0].value == 1
    phases = {s.labels["phase"]: s.value for s in families["warmbuild_phase_seconds"].samples}
    assert phases["build"] == cases["build"].time
    assert json.loads((workspace / "build-result.json").read_text())["image"]["digest"] == dotenv["IMAGE_DIGEST"]


def test_gitlab_input_values_never_reach_a_shell(tmp_path, workspace):
    """A build arg full of shell syntax arrives in the image verbatim; nothing runs it."""
    canary = tmp_path / "pwned"
    payload = f'$(touch {canary}); `touch {canary}` "; touch {canary}; echo "'
    (workspace / "app" / "Dockerfile.args").write_text(
        f'FROM {os.environ["WARMBUILD_BASE_IMAGE"]}\nARG PAYLOAD\nRUN printf \'%s\' "$PAYLOAD" > /payload && test "$(cat /payload)" = "$PAYLOAD"\n'
    )
    job, variables = gitlab_job(
        {
            "image": "127.0.0.1:5000/tools/warmbuild:0.1.0",
            "context": "app",
            "file": "app/Dockerfile.args",
            "builder": os.environ["WARMBUILD_BUILDER"],
            "build-args": f"PAYLOAD={payload}",
        }
    )
    env = clean_env(
        CI="true", GITLAB_CI="true", CI_PROJECT_DIR=str(workspace), CI_JOB_URL="http://127.0.0.1:9/-/jobs/8"
    )
    env.update(variables)
    script = run_gitlab_lines(job["script"], env, workspace)
    assert script.returncode == 0, script.stderr[-3000:]
    assert not canary.exists()


# --- Jenkins -----------------------------------------------------------------------------------


def jenkins_pipeline() -> tuple[dict[str, str], list[str], list[str]]:
    """docs/jenkins.md's pipeline: its environment block and its `sh '…'` lines (stages, post)."""
    text = (ROOT / "docs/jenkins.md").read_text()
    groovy = re.search(r"```groovy\n(.*?)```", text, re.S)[1]
    environment = dict(
        re.findall(r"^\s+([A-Z_]+) = '([^']*)'", re.search(r"environment \{(.*?)\}", groovy, re.S)[1], re.M)
    )
    stages, post = groovy.split("post {", 1)
    sh = lambda part: re.findall(r"^\s*sh '([^']*)'", part, re.M)  # noqa: E731
    return environment, sh(stages), sh(post)


def _workspace_tmp(workspace: Path) -> Path:
    """Jenkins' `WORKSPACE@tmp` beside the workspace (its durable-task scripts live there)."""
    path = workspace.with_name(workspace.name + "@tmp")
    path.mkdir(exist_ok=True)
    return path


def jenkins_env(workspace: Path, image: str, **extra: str) -> dict:
    environment, _, _ = jenkins_pipeline()
    env = clean_env(
        WORKSPACE=str(workspace),
        BUILD_URL="http://127.0.0.1:9/job/app/12/",
        JOB_NAME="app",
        BUILD_NUMBER="12",
        BUILD_TAG=f"jenkins-app-12-{uuid.uuid4().hex[:6]}",
        EXECUTOR_NUMBER="0",
        WORKSPACE_TMP=str(_workspace_tmp(workspace)),
        JENKINS_URL="http://127.0.0.1:9/",
        GIT_COMMIT=uuid.uuid4().hex + "0" * 8,
        GIT_URL="http://127.0.0.1:9/acme/app.git",
    )
    env.update(environment)
    # Site-specific values: where to push, and the kubeconfig credential's file.
    env.update(
        IMAGE=image,
        KUBECONFIG=os.environ["WARMBUILD_CI_KUBECONFIG"],
        WARMBUILD_POOL=POOL,
        WARMBUILD_NAMESPACE=NAMESPACE,
    )
    env.update(extra)
    return env


def test_jenkins_pipeline_from_the_docs_runs_as_written(tmp_path, workspace, registry):
    environment, stage_lines, post_lines = jenkins_pipeline()
    assert stage_lines == ['exec warmbuild build . --tag "$IMAGE:$GIT_COMMIT" --push'] and post_lines == [
        "warmbuild release"
    ]
    app = workspace / "app"
    image = f"{registry}/warmbuild-tests/jenkins-{uuid.uuid4().hex[:10]}"
    env = jenkins_env(app, image)
    for line in stage_lines + post_lines:
        done = subprocess.run(
            ["bash", "-xe", "-c", line],
            env=env,
            cwd=app,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
    result = json.loads((app / environment["WARMBUILD_RESULT_FILE"]).read_text())
    assert result["status"] == "success" and result["placement"]["path"] in ("warm", "spill")
    assert result["image"]["digest"] == registry_digest(f"{image}:{env['GIT_COMMIT']}")
    dotenv = dict(line.split("=", 1) for line in (app / environment["WARMBUILD_DOTENV"]).read_text().splitlines())
    assert dotenv["IMAGE_DIGEST"] == result["image"]["digest"]
    (suite,) = list(JUnitXml.fromfile(str(app / environment["WARMBUILD_JUNIT"])))
    assert [case.name for case in suite] == ["queue", "startup", "context", "build", "export", "push"]
    assert "WARMBUILD_STATE_FILE" not in environment
    assert not list(app.rglob("*state*.json"))  # not in the workspace, the build context
    assert list((Path(env["WORKSPACE_TMP"]) / "warmbuild").iterdir()) == []  # released, cleaned up


def test_jenkins_abort_reaches_warmbuild_through_exec(tmp_path, workspace, registry):
    _, (line,), post_lines = jenkins_pipeline()
    app = workspace / "app"
    marker = f"wb-jenkins-{uuid.uuid4().hex[:10]}"
    (app / "Dockerfile").write_text(f"FROM {os.environ['WARMBUILD_BASE_IMAGE']}\nRUN echo {marker} && sleep 60\n")
    env = jenkins_env(app, f"{registry}/warmbuild-tests/jenkins-abort")
    step = subprocess.Popen(
        ["bash", "-xe", "-c", line],
        env=env,
        cwd=app,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not slots_held_by_pid(step.pid) or not _running(marker):
            assert time.monotonic() < deadline and step.poll() is None, "the build did not start"
            time.sleep(0.2)
        step.send_signal(signal.SIGTERM)  # Jenkins' abort: SIGTERM to the sh step's process
        signalled = time.monotonic()
        code = step.wait(timeout=30)
    finally:
        if step.poll() is None:
            step.kill()
            step.wait()
    assert code == 143, step.stderr.read()[-3000:]
    assert time.monotonic() - signalled < 5
    assert slots_held_by_pid(step.pid) == []
    post = subprocess.run(
        ["bash", "-xe", "-c", post_lines[0]], env=env, cwd=app, capture_output=True, text=True, timeout=60
    )
    assert post.returncode == 0 and "nothing to release" in post.stderr


def _running(marker: str) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                    return True
            except OSError:
                continue
    return False
