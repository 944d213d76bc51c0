"""deploy/manifests/warmbuild.yaml is the chart rendered with its default values, byte for byte."""

import subprocess

import yaml
from helm_render import MANIFESTS, RENDER_MANIFESTS, helm_binary, render


def test_plain_manifests_equal_the_charts_rendering():
    done = subprocess.run(
        [str(RENDER_MANIFESTS), "--stdout"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"WARMBUILD_HELM": helm_binary(), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert MANIFESTS.read_text() == done.stdout, "deploy/manifests/warmbuild.yaml is stale: run deploy/render-manifests"


def test_plain_manifests_hold_the_default_install():
    docs = [doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc]
    assert docs == render()
    namespaced = [doc for doc in docs if not doc["kind"].startswith("ValidatingAdmissionPolicy")]
    assert {doc["metadata"]["namespace"] for doc in namespaced} == {"warmbuild"}
