"""Pushes a registry refuses, and secrets that must not leak into logs, results or layers."""

import io
import json
import shutil
import socket
import subprocess
import tarfile
import time

import pytest
import requests

READONLY_REGISTRY = "127.0.0.1:5001"  # the testbed's buildkitd.toml allows plain HTTP to it


@pytest.fixture
def readonly_registry(tmp_path):
    """A real registry (same package as the testbed's) in read-only maintenance mode."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed: run testbed/up")
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage:\n  filesystem: {{rootdirectory: {tmp_path / 'data'}}}\n"
        "  maintenance:\n    readonly: {enabled: true}\n"
        f"http: {{addr: '{READONLY_REGISTRY}'}}\n"
    )
    process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", 5001), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("the read-only registry did not start")
                time.sleep(0.1)
        yield READONLY_REGISTRY
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_refused_push_is_reported_as_such_and_not_as_success(
    run_warmbuild, tiny_app, registry, readonly_registry, tmp_path
):
    result_file = tmp_path / "result.json"
    tag = f"{readonly_registry}/team/tiny:refused"
    done = run_warmbuild(
        "build",
        str(tiny_app),
        "--build-arg",
        f"REGISTRY={registry}",
        "--tag",
        tag,
        "--push",
        "--result-file",
        str(result_file),
    )
    assert done.returncode == 5, done.stderr
    assert "warmbuild: error: the registry refused the push of " + tag in done.stderr
    result = json.loads(result_file.read_text())
    assert result["status"] == "failed"
    assert result["image"]["pushed"] is False and result["image"]["digest"] is None
    # Nothing was stored under that tag.
    response = requests.get(f"http://{readonly_registry}/v2/team/tiny/manifests/refused", timeout=5)
    assert response.status_code == 404


SECRET_DOCKERFILE = """\
ARG REGISTRY
FROM ${REGISTRY}/library/python:3.11-slim
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN \\
    python -c "import os,hashlib; print('token sha256', hashlib.sha256(os.environ['HF_TOKEN'].encode()).hexdigest()[:12])" \\
    && test -n "$HF_TOKEN" && echo ok > /token-was-seen
"""


def test_secrets_reach_the_step_but_not_logs_results_or_layers(
    run_warmbuild, tmp_path, registry, unique_repo, github_files
):
    secret_value = "hf_secret_" + "x7Q2" * 6
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(SECRET_DOCKERFILE)
    result_file = tmp_path / "result.json"
    tag = f"{unique_repo}:secret"
    done = run_warmbuild(
        "build",
        str(app),
        "--build-arg",
        f"REGISTRY={registry}",
        "--secret",
        "id=hf_token,env=HF_TOKEN",
        "--tag",
        tag,
        "--push",
        "--result-file",
        str(result_file),
        "--no-cache",
        env={"HF_TOKEN": secret_value, **github_files.env},
    )
    assert done.returncode == 0, done.stderr
    assert "token sha256" in done.stderr  # the step really ran with the secret
    for text in (
        done.stderr,
        done.stdout,
        result_file.read_text(),
        github_files.output.read_text(),
        github_files.summary.read_text(),
    ):
        assert secret_value not in text
    # No layer of the pushed image holds it.
    host, _, rest = tag.partition("/")
    repo, _, ref = rest.rpartition(":")
    manifest = requests.get(
        f"http://{host}/v2/{repo}/manifests/{ref}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    ).json()
    seen_marker = False
    for layer in manifest["layers"]:
        blob = requests.get(f"http://{host}/v2/{repo}/blobs/{layer['digest']}", timeout=60).content
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            for member in tar.getmembers():
                if member.name.endswith("token-was-seen"):
                    seen_marker = True
                if member.isfile() and member.size < 10_000_000:
                    assert secret_value.encode() not in tar.extractfile(member).read(), member.name
    assert seen_marker
