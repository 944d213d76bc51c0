"""The Kubernetes transport against the testbed's real kube-apiserver: each way a kubeconfig can authenticate."""

from __future__ import annotations

import base64
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from warmbuild.errors import ClusterError
from warmbuild.kube.client import connect

NAMESPACE = os.environ.get("WARMBUILD_NAMESPACE", "warmbuild")
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"


@pytest.fixture(scope="module")
def testbed() -> Path:
    return Path(os.environ["WARMBUILD_TESTBED_DIR"])


def ci_token() -> str:
    document = yaml.safe_load(Path(os.environ["WARMBUILD_CI_KUBECONFIG"]).read_text())
    return document["users"][0]["user"]["token"]


def kubeconfig(path: Path, cluster: dict, user: dict) -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "t",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return str(path)


def test_an_exec_credential_plugin_authenticates_as_the_identity_it_prints(tmp_path, testbed):
    plugin = tmp_path / "bin" / "token-plugin"
    plugin.parent.mkdir()
    plugin.write_text(
        f"#!{sys.executable}\nimport json\nprint(json.dumps({{'apiVersion': 'client.authentication.k8s.io/v1', "
        f"'kind': 'ExecCredential', 'status': {{'token': {ci_token()!r}}}}}))\n"
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    path = kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443", "certificate-authority": str(testbed / "pki" / "ca.crt")},
        {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "bin/token-plugin"}},
    )
    client = connect(path)
    assert client.request("GET", LEASES).body["kind"] == "LeaseList"
    with pytest.raises(ClusterError, match="missing permission: list nodes"):  # it is the CI service account, not admin
        client.request("GET", "/api/v1/nodes")


def test_a_revoked_exec_token_is_replaced_by_running_the_plugin_again(tmp_path, testbed):
    """The first token the plugin prints is refused (401); the client runs it again once and goes on."""
    calls = tmp_path / "calls"
    plugin = tmp_path / "token-plugin"
    plugin.write_text(
        f"#!{sys.executable}\nimport json, pathlib\ncalls = pathlib.Path({str(calls)!r})\n"
        "count = len(calls.read_text()) if calls.exists() else 0\ncalls.write_text('x' * (count + 1))\n"
        f"token = 'revoked-token' if count == 0 else {ci_token()!r}\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential', "
        "'status': {'token': token, 'expirationTimestamp': '2099-01-01T00:00:00Z'}}))\n"
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    path = kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443", "certificate-authority": str(testbed / "pki" / "ca.crt")},
        {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)}},
    )
    client = connect(path)
    assert client.request("GET", LEASES).body["kind"] == "LeaseList"
    assert calls.read_text() == "xx"  # run twice: the refused token, then a good one
    client.request("GET", LEASES)
    assert calls.read_text() == "xx"  # the good one is kept until it expires


def test_a_token_that_is_refused_for_good_is_one_line_after_one_retry(tmp_path, testbed):
    path = kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443", "certificate-authority": str(testbed / "pki" / "ca.crt")},
        {"token": "not-a-token"},
    )
    with pytest.raises(ClusterError, match="rejected the credentials"):
        connect(path).request("GET", LEASES)


def test_client_certificate_files_relative_to_the_kubeconfig_authenticate(tmp_path, testbed):
    for name in ("ca.crt", "admin.crt", "admin.key"):
        (tmp_path / name).write_bytes((testbed / "pki" / name).read_bytes())
    path = kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443", "certificate-authority": "ca.crt"},
        {"client-certificate": "admin.crt", "client-key": "admin.key"},
    )
    assert connect(path).request("GET", "/api/v1/nodes").body["kind"] == "NodeList"


def test_a_server_signed_by_another_ca_is_refused_and_said_so(tmp_path, testbed):
    other_ca = (testbed / "pki" / "admin.crt").read_text()  # a certificate, but not the one that signed the server's
    path = kubeconfig(
        tmp_path / "config",
        {
            "server": "https://127.0.0.1:6443",
            "certificate-authority-data": base64.b64encode(other_ca.encode()).decode(),
        },
        {"token": ci_token()},
    )
    with pytest.raises(ClusterError) as err:
        connect(path).request("GET", LEASES)
    assert "cannot reach the Kubernetes API at https://127.0.0.1:6443" in err.value.message
    assert "CERTIFICATE_VERIFY_FAILED" in err.value.message
    assert ci_token() not in err.value.message


def test_a_path_with_its_own_query_takes_more_query_parameters():
    client = connect(os.environ["WARMBUILD_CI_KUBECONFIG"])
    listed = client.request("GET", LEASES + "?limit=1", query={"labelSelector": "warmbuild.dev/no-such-label=x"})
    assert listed.body["kind"] == "LeaseList" and listed.body["items"] == []
