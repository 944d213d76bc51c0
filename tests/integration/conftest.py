import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def admin():
    """warmbuild's own API client as the testbed's admin (KUBECONFIG): what `warmbuild gc` runs as,
    takeovers, impostors and pool changes."""
    from warmbuild.kube.client import connect

    return connect(os.environ["KUBECONFIG"])


@pytest.fixture(scope="module")
def ci():
    """warmbuild's own API client as the CI identity (WARMBUILD_CI_KUBECONFIG), bound to the chart's CI Role."""
    from warmbuild.kube.client import connect

    return connect(os.environ["WARMBUILD_CI_KUBECONFIG"])


@pytest.fixture(scope="session")
def registry() -> str:
    return os.environ["WARMBUILD_REGISTRY"]


@pytest.fixture(scope="session")
def builder() -> str:
    return os.environ["WARMBUILD_BUILDER"]


@pytest.fixture
def tiny_app(tmp_path) -> Path:
    """A private copy of the tiny app, so tests can edit code without touching each other."""
    app = tmp_path / "tiny-app"
    shutil.copytree(FIXTURES / "tiny-app", app)
    return app


@pytest.fixture
def unique_repo(registry) -> str:
    return f"{registry}/warmbuild-tests/tiny-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def run_warmbuild():
    """Run the real `warmbuild` entry point as a CI job would: a separate process."""

    def run(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "warmbuild.cli", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )

    return run


MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@pytest.fixture(scope="session")
def registry_manifest():
    """(digest the registry states, sha256 of the bytes it serves) for NAME:TAG, over the HTTP API."""
    import hashlib

    import requests

    def fetch(reference: str) -> tuple[str, str]:
        host, _, rest = reference.partition("/")
        repo, _, tag = rest.rpartition(":")
        response = requests.get(
            f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10
        )
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"], "sha256:" + hashlib.sha256(response.content).hexdigest()

    return fetch


class GitHubFiles:
    def __init__(self, root: Path):
        self.output = root / "github_output"
        self.summary = root / "step_summary.md"
        self.output.touch()
        self.summary.touch()
        self.env = {
            "GITHUB_ACTIONS": "true",
            "GITHUB_OUTPUT": str(self.output),
            "GITHUB_STEP_SUMMARY": str(self.summary),
        }


@pytest.fixture
def github_files(tmp_path) -> GitHubFiles:
    """The files a GitHub runner hands a step, in a private directory."""
    root = tmp_path / "github"
    root.mkdir()
    return GitHubFiles(root)


@pytest.fixture(scope="session")
def api():
    """An admin client of the official Kubernetes library, for tests that drive the cluster with it."""
    from kubernetes import config

    return config.new_client_from_config(config_file=os.environ["KUBECONFIG"])


@pytest.fixture(scope="session")
def core(api):
    from kubernetes import client

    return client.CoreV1Api(api)
