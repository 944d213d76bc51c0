"""Rendering deploy/helm/warmbuild with the real helm binary (testbed/up builds it: $WARMBUILD_HELM).

Shared by tests/unit/test_helm_*.py and tests/integration/test_helm_chart.py. Without a helm binary
the tests are skipped, except under WARMBUILD_REQUIRE_TESTBED=1 (CI), where that is an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "warmbuild"
MANIFESTS = REPO / "deploy" / "manifests" / "warmbuild.yaml"
RENDER_MANIFESTS = REPO / "deploy" / "render-manifests"
# The plain manifests are the default rendering with the TLS Secrets left out (each install makes its own).
MANIFEST_SETS = ("tls.existingSecret=warmbuild-builder-tls",)

# The documented variants (docs/deploy.md): name -> values file under the chart's ci/ directory.
VARIANTS = {
    "default": None,
    "rootless": "rootless-values.yaml",
    "mtls": "mtls-values.yaml",
    "plaintext": "plaintext-values.yaml",
    "mtls-cert-manager": "mtls-cert-manager-values.yaml",
    "scheduler": "scheduler-values.yaml",
    "autoscaling-hpa": "autoscaling-hpa-values.yaml",
    "autoscaling-keda": "autoscaling-keda-values.yaml",
}


def helm_binary() -> str:
    path = os.environ.get("WARMBUILD_HELM") or shutil.which("helm")
    if path and Path(path).is_file():
        return path
    message = (
        'no helm binary: run eval "$(testbed/up)" (it builds helm from testbed/go/helm and exports WARMBUILD_HELM)'
    )
    if os.environ.get("WARMBUILD_REQUIRE_TESTBED") == "1":
        pytest.fail(message)
    pytest.skip(message)


def helm(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def variant_args(variant: str) -> list[str]:
    values = VARIANTS[variant]
    return ["-f", str(CHART / "ci" / values)] if values else []


def template_command(
    *,
    variant: str = "default",
    sets: tuple[str, ...] = (),
    release: str = "warmbuild",
    namespace: str = "warmbuild",
    extra: tuple[str, ...] = (),
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, *variant_args(variant)]
    for item in sets:
        args += ["--set", item]
    return args + list(extra)


def render(
    *,
    variant: str = "default",
    sets: tuple[str, ...] = (),
    release: str = "warmbuild",
    namespace: str = "warmbuild",
    extra: tuple[str, ...] = (),
) -> list[dict]:
    done = helm(*template_command(variant=variant, sets=sets, release=release, namespace=namespace, extra=extra))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_error(*, variant: str = "default", sets: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> str:
    done = helm(*template_command(variant=variant, sets=sets, extra=extra))
    assert done.returncode != 0, f"helm template accepted {sets} {extra}"
    return done.stderr


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [doc for doc in of_kind(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]
