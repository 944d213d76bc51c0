"""deploy/manifests/warmbuild.yaml is the chart rendered with its default values (minus the per-install TLS
Secrets), byte for byte."""

import subprocess

import yaml
from helm_render import MANIFEST_SETS, MANIFESTS, RENDER_MANIFESTS, helm_binary, render


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
    assert docs == render(sets=MANIFEST_SETS)
    # No key is ever published: the Secrets are made per install.
    assert not [doc for doc in docs if doc["kind"] == "Secret"]
    (statefulset,) = [doc for doc in docs if doc["kind"] == "StatefulSet"]
    (buildkitd,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert "--tlscert=/certs/tls.crt" in buildkitd["args"]
    namespaced = [doc for doc in docs if not doc["kind"].startswith("ValidatingAdmissionPolicy")]
    assert {doc["metadata"]["namespace"] for doc in namespaced} == {"warmbuild"}
