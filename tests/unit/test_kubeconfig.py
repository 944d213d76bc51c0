"""Reading kubeconfigs as kubectl does, and the credentials `cluster` sends from them."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from warmbuild.errors import ClusterError
from warmbuild.kube.client import Credentials, run_exec_plugin
from warmbuild.kube.kubeconfig import ClusterAccess, ExecPlugin, access_from, kubeconfig_paths, read_kubeconfig


def write_config(path: Path, clusters=(), users=(), contexts=(), current: str | None = None) -> str:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": c} for n, c in clusters],
        "users": [{"name": n, "user": u} for n, u in users],
        "contexts": [{"name": n, "context": {"cluster": c, "user": u}} for n, c, u in contexts],
    }
    if current:
        document["current-context"] = current
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_relative_paths_are_read_against_the_file_that_names_them(tmp_path):
    (tmp_path / "conf").mkdir()
    path = write_config(
        tmp_path / "conf" / "config",
        clusters=[("c", {"server": "https://127.0.0.1:6443/", "certificate-authority": "pki/ca.crt"})],
        users=[("u", {"client-certificate": "pki/u.crt", "client-key": "/abs/u.key", "tokenFile": "tok"})],
        contexts=[("x", "c", "u")],
        current="x",
    )
    access = read_kubeconfig([path])
    assert access.server == "https://127.0.0.1:6443"
    assert access.ca_file == str(tmp_path / "conf" / "pki" / "ca.crt")
    assert access.client_cert_file == str(tmp_path / "conf" / "pki" / "u.crt")
    assert access.client_key_file == "/abs/u.key"
    assert access.token_file == str(tmp_path / "conf" / "tok")
    assert access.description.endswith("context x")


def test_several_files_merge_with_the_first_file_winning(tmp_path):
    first = write_config(tmp_path / "a", users=[("u", {"token": "from-a"})], contexts=[("x", "c", "u")], current="x")
    second = write_config(
        tmp_path / "b",
        clusters=[("c", {"server": "https://127.0.0.1:1"})],
        users=[("u", {"token": "from-b"})],
        contexts=[("x", "other", "u"), ("y", "c", "u")],
        current="y",
    )
    missing = str(tmp_path / "missing")
    access = read_kubeconfig([missing, first, second])
    assert (access.server, access.token) == ("https://127.0.0.1:1", "from-a")
    assert read_kubeconfig([first, second], context="y").token == "from-a"
    assert kubeconfig_paths(os.pathsep.join([first, "", second])) == [first, second]
    assert kubeconfig_paths("") == [str(Path.home() / ".kube" / "config")]


@pytest.mark.parametrize(
    "setup, message",
    [
        (dict(contexts=[("x", "c", "u")]), "no current-context"),
        (dict(contexts=[("x", "c", "u")], current="nope"), "no context 'nope' (contexts: x)"),
        (dict(contexts=[("x", "gone", "u")], current="x"), "names cluster 'gone', which is missing"),
        (
            dict(
                clusters=[("c", {"server": "https://127.0.0.1:1"})],
                users=[("u", {"auth-provider": {"name": "gcp"}})],
                contexts=[("x", "c", "u")],
                current="x",
            ),
            "auth-provider 'gcp'",
        ),
        (
            dict(
                clusters=[("c", {"server": "https://127.0.0.1:1", "certificate-authority-data": "%%%"})],
                contexts=[("x", "c", "u")],
                current="x",
            ),
            "certificate-authority-data is not valid base64",
        ),
    ],
)
def test_a_kubeconfig_that_cannot_work_is_one_line_naming_what_to_fix(tmp_path, setup, message):
    path = write_config(tmp_path / "config", **setup)
    with pytest.raises(ClusterError) as err:
        read_kubeconfig([path])
    assert message in err.value.message and "\n" not in err.value.message


@pytest.mark.parametrize("value", ["false", "true", "no", "0", 0, 1, "", ["x"]])
def test_insecure_skip_tls_verify_must_be_a_yaml_boolean(tmp_path, value):
    # The quoted "false" used to turn verification OFF (a non-empty string is truthy).
    path = write_config(
        tmp_path / "config",
        clusters=[("c", {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": value})],
        users=[("u", {"token": "t"})],
        contexts=[("x", "c", "u")],
        current="x",
    )
    with pytest.raises(ClusterError) as err:
        read_kubeconfig([path])
    message = err.value.message
    assert "insecure-skip-tls-verify must be true or false (unquoted)" in message and "\n" not in message
    assert "context x" in message


def test_insecure_skip_tls_verify_as_a_boolean_is_read_as_written(tmp_path):
    for value in (True, False):
        path = write_config(
            tmp_path / "config",
            clusters=[("c", {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": value})],
            users=[("u", {"token": "t"})],
            contexts=[("x", "c", "u")],
            current="x",
        )
        assert read_kubeconfig([path]).insecure_skip_tls_verify is value
    assert access_from({"server": "https://127.0.0.1:1"}, {}, "d").insecure_skip_tls_verify is False


@pytest.mark.parametrize(
    "ca", [{"certificate-authority": "/etc/ca.crt"}, {"certificate-authority-data": base64.b64encode(b"PEM").decode()}]
)
def test_a_ca_together_with_the_insecure_flag_is_refused_as_kubectl_refuses_it(ca):
    with pytest.raises(ClusterError) as err:
        access_from({"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True, **ca}, {}, "kubeconfig k")
    assert "specifying a root certificates file with the insecure flag is not allowed" in err.value.message
    assert err.value.message.startswith("kubeconfig k: ") and "\n" not in err.value.message
    # With the flag false, the CA is used.
    assert not access_from(
        {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": False, **ca}, {}, "k"
    ).insecure_skip_tls_verify


def test_no_file_at_all_is_named(tmp_path):
    with pytest.raises(ClusterError, match="does not exist"):
        read_kubeconfig([str(tmp_path / "none")])


def test_the_access_never_shows_its_secrets():
    access = access_from(
        {"server": "https://127.0.0.1:1"},
        {"token": "s3cret", "client-key-data": base64.b64encode(b"KEY").decode()},
        "d",
    )
    assert access.client_key_pem == b"KEY"
    assert "s3cret" not in repr(access) and "KEY" not in repr(access)


def test_token_files_are_read_again_for_each_request(tmp_path):
    token = tmp_path / "token"
    token.write_text("one\n")
    credentials = Credentials(ClusterAccess(server="https://127.0.0.1:1", description="d", token_file=str(token)))
    assert credentials.authorization() == "Bearer one"
    token.write_text("two")  # a projected service-account token rotated
    assert credentials.authorization() == "Bearer two"
    token.unlink()
    with pytest.raises(ClusterError, match="cannot read the token file"):
        credentials.authorization()


def test_basic_auth_is_encoded():
    credentials = Credentials(
        ClusterAccess(server="https://127.0.0.1:1", description="d", username="ann", password="pw")
    )
    assert credentials.authorization() == "Basic " + base64.b64encode(b"ann:pw").decode()


def exec_plugin_script(tmp_path: Path, status: dict, exit_code: int = 0) -> Path:
    """A real executable that records each call and prints an ExecCredential."""
    script = tmp_path / "plugin"
    calls = tmp_path / "calls"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(calls)!r}, "a") as f:
    f.write(json.dumps({{"args": sys.argv[1:], "info": json.loads(os.environ["KUBERNETES_EXEC_INFO"]), "env": os.environ.get("PLUGIN_ENV")}}) + "\\n")
if {exit_code}:
    print("login required: run the-cloud login", file=sys.stderr)
    sys.exit({exit_code})
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": {json.dumps(status)}}}))
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def calls_of(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]


def test_an_exec_plugin_is_run_with_its_args_and_env_and_cached_until_it_expires(tmp_path, monkeypatch):
    from warmbuild.kube import client as cluster

    script = exec_plugin_script(tmp_path, {"token": "exec-token", "expirationTimestamp": "2030-01-01T00:00:00Z"})
    plugin = ExecPlugin(command=str(script), args=("get-token", "--cluster", "c"), env=(("PLUGIN_ENV", "yes"),))
    credentials = Credentials(ClusterAccess(server="https://127.0.0.1:1", description="d", exec_plugin=plugin))
    assert credentials.authorization() == "Bearer exec-token"
    assert credentials.authorization() == "Bearer exec-token"
    assert len(calls_of(tmp_path)) == 1
    call = calls_of(tmp_path)[0]
    assert call["args"] == ["get-token", "--cluster", "c"] and call["env"] == "yes"
    assert call["info"]["kind"] == "ExecCredential" and call["info"]["spec"]["interactive"] is False
    monkeypatch.setattr(cluster.time, "time", lambda: 1_893_456_000.0 - 10)  # 10 s before it expires
    assert credentials.authorization() == "Bearer exec-token"
    assert len(calls_of(tmp_path)) == 2


def test_an_exec_plugin_that_fails_or_is_missing_is_one_line(tmp_path):
    script = exec_plugin_script(tmp_path, {}, exit_code=3)
    access = ClusterAccess(server="https://127.0.0.1:1", description="d")
    with pytest.raises(ClusterError) as err:
        run_exec_plugin(ExecPlugin(command=str(script)), access)
    assert "exit code 3: login required: run the-cloud login" in err.value.message
    with pytest.raises(ClusterError) as err:
        run_exec_plugin(
            ExecPlugin(command=str(tmp_path / "absent"), install_hint="install it with the-cloud components install\n"),
            access,
        )
    assert err.value.message.endswith("is not installed: install it with the-cloud components install")


def test_env_credentials_with_a_ca_that_is_not_base64_are_one_line():
    from warmbuild.kube import client as cluster

    with pytest.raises(ClusterError, match="WARMBUILD_K8S_CA_DATA is not base64"):
        cluster._from_env(
            {
                "WARMBUILD_K8S_SERVER": "https://127.0.0.1:6443",
                "WARMBUILD_K8S_TOKEN": "t",
                "WARMBUILD_K8S_CA_DATA": "not base64!",
            }
        )
