"""A pool build in a namespace that does not exist: the API server lists nothing there (no error),
then refuses the ephemeral pod's create with 404. One line naming the namespace, exit 6."""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import datetime, timezone

import pytest

from warmbuild import cli
from warmbuild.errors import ClusterError
from warmbuild.kube.client import KubeNotFound, KubeResponse
from warmbuild.pool.ephemeral import create_ephemeral_pod

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class NoNamespaceCluster:
    """An API server without namespace `gone`, seen by an identity that may list and create there:
    LISTs answer empty, GETs of objects 404, and creates 404 as NamespaceLifecycle admission does."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []

    def server_now(self) -> datetime:
        return NOW

    def request(self, method, path, body=None, query=None, content_type="application/json") -> KubeResponse:
        self.requests.append((method, path))
        assert "/namespaces/gone/" in path
        if method == "GET" and re.search(r"/(pods|leases|events|statefulsets)$", path):
            return KubeResponse(200, {"items": []}, NOW)
        if method == "POST":
            raise KubeNotFound('namespaces "gone" not found')
        raise KubeNotFound(f"{path.rsplit('/', 1)[-1]} not found")


def test_a_create_in_a_missing_namespace_is_one_line_naming_it():
    with pytest.raises(ClusterError) as err:
        create_ephemeral_pod(NoNamespaceCluster(), {"metadata": {"namespace": "gone", "generateName": "x-"}})
    assert err.value.exit_code == 6
    assert err.value.message.startswith("namespace gone does not exist (or this identity cannot see it)")


@pytest.fixture
def quiet_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("GITHUB_", "CI_", "WARMBUILD_", "RUNNER_")) or name in ("GITLAB_CI", "KUBECONFIG"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield tmp_path
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("fallback, code", [("auto", 6), ("ephemeral", 6), ("fail", 7)])
def test_a_pool_build_in_a_missing_namespace_is_one_line_without_a_traceback(
    quiet_env, monkeypatch, capsys, fallback, code
):
    cluster = NoNamespaceCluster()
    monkeypatch.setattr(cli, "connect", lambda *_args: cluster)
    argv = ["build", ".", "--pool", "p", "--namespace", "gone", "--max-wait", "0", "--fallback", fallback]
    assert cli.main([*argv, "--result-file", "r.json", "--state-file", "s.json"]) == code
    out, err = capsys.readouterr()
    (line,) = err.splitlines()[-1:]
    assert line.startswith("warmbuild: error: ") and "Traceback" not in err
    assert "namespace gone" in line
    if code == 6:
        assert "namespace gone does not exist (or this identity cannot see it)" in line
        assert ("POST", "/api/v1/namespaces/gone/pods") in cluster.requests
    result = json.loads((quiet_env / "r.json").read_text())
    assert result["status"] == "failed" and result["exit_code"] == code
    assert not (quiet_env / "s.json").exists()  # nothing was created, nothing to release
