"""Where the Kubernetes API is and how to authenticate to it, read from a kubeconfig or the pod.

Pure reading, no network: `cluster` turns a ClusterAccess into a connection. What kubectl reads is
read here too: several files in $KUBECONFIG merged (the first file to name a cluster, user or
context wins, as kubectl merges them), paths relative to the file that names them, inline *-data,
bearer tokens and token files, basic auth, exec credential plugins, proxy-url, tls-server-name and
insecure-skip-tls-verify. The legacy auth-provider entries are refused with the fix to apply.

Read strictly where a lenient reading would weaken TLS: insecure-skip-tls-verify must be a YAML
boolean (the string "false" is truthy in Python and would turn verification off), and a CA together
with the insecure flag is refused, as kubectl refuses it, rather than one of them silently ignored.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterError

IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
IN_CLUSTER_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
_SECTIONS = (("clusters", "cluster"), ("users", "user"), ("contexts", "context"))


@dataclass(frozen=True)
class ExecPlugin:
    """A client-go exec credential plugin: a command that prints an ExecCredential."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"
    install_hint: str = ""


@dataclass(frozen=True, repr=False)
class ClusterAccess:
    server: str
    description: str  # where the credentials came from, for messages; never a secret
    ca_file: str | None = None
    ca_pem: str | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    proxy_url: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    username: str | None = None
    password: str | None = None
    exec_plugin: ExecPlugin | None = None

    def __repr__(self) -> str:  # keeps tokens and keys out of tracebacks and logs
        return f"ClusterAccess(server={self.server!r}, description={self.description!r})"


def kubeconfig_paths(value: str | None) -> list[str]:
    """$KUBECONFIG's list (or ~/.kube/config) in order, empty entries dropped."""
    paths = [p for p in (value or "").split(os.pathsep) if p]
    return paths or [str(Path.home() / ".kube" / "config")]


def read_kubeconfig(paths: list[str], context: str | None = None) -> ClusterAccess:
    """The access the chosen context (or current-context) of the merged files gives."""
    import yaml

    existing = [p for p in paths if Path(p).is_file()]
    if not existing:
        raise ClusterError(f"kubeconfig {os.pathsep.join(paths)} does not exist")
    merged: dict[str, dict[str, dict]] = {section: {} for section, _ in _SECTIONS}
    current = None
    for path in existing:
        try:
            document = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ClusterError(f"cannot read kubeconfig {path}: {type(exc).__name__}") from None
        if not isinstance(document, dict):
            raise ClusterError(
                f"kubeconfig {path} is not a kubeconfig (expected a mapping with clusters, users, contexts)"
            )
        base = Path(path).resolve().parent
        for section, field in _SECTIONS:
            for entry in document.get(section) or []:
                if isinstance(entry, dict) and entry.get("name") and entry["name"] not in merged[section]:
                    merged[section][entry["name"]] = _resolve_paths(dict(entry.get(field) or {}), base)
        current = current or document.get("current-context")
    where = f"kubeconfig {os.pathsep.join(existing)}"
    name = context or current
    if not name:
        raise ClusterError(f"{where} has no current-context: pass --context or run `kubectl config use-context NAME`")
    chosen = merged["contexts"].get(name)
    if chosen is None:
        raise ClusterError(
            f"{where} has no context {name!r} (contexts: {', '.join(sorted(merged['contexts'])) or 'none'})"
        )
    cluster = merged["clusters"].get(chosen.get("cluster") or "")
    if not cluster or not cluster.get("server"):
        raise ClusterError(
            f"{where}: context {name!r} names cluster {chosen.get('cluster')!r}, which is missing or has no server"
        )
    user = merged["users"].get(chosen.get("user") or "", {})
    return access_from(cluster, user, f"{where}, context {name}")


def access_from(cluster: Mapping, user: Mapping, description: str) -> ClusterAccess:
    """One cluster and one user entry (paths already absolute) as a ClusterAccess."""
    if user.get("auth-provider"):
        provider = (user["auth-provider"] or {}).get("name", "?")
        raise ClusterError(
            f"{description}: the user authenticates with auth-provider {provider!r}, which kubectl no longer "
            "supports either; switch it to an exec credential plugin (e.g. gke-gcloud-auth-plugin, kubelogin)"
        )
    insecure = _boolean(cluster, "insecure-skip-tls-verify", description)
    if insecure and (cluster.get("certificate-authority") or cluster.get("certificate-authority-data")):
        raise ClusterError(
            f"{description}: the cluster sets both a certificate authority and insecure-skip-tls-verify: true; "
            "specifying a root certificates file with the insecure flag is not allowed: remove one of them"
        )
    exec_plugin = None
    if user.get("exec"):
        spec = user["exec"]
        if not spec.get("command"):
            raise ClusterError(f"{description}: the user's exec plugin has no command")
        exec_plugin = ExecPlugin(
            command=spec["command"],
            args=tuple(str(a) for a in spec.get("args") or ()),
            env=tuple((str(e["name"]), str(e.get("value", ""))) for e in spec.get("env") or () if e.get("name")),
            api_version=spec.get("apiVersion") or "client.authentication.k8s.io/v1",
            install_hint=spec.get("installHint") or "",
        )
    return ClusterAccess(
        server=str(cluster["server"]).rstrip("/"),
        description=description,
        ca_file=cluster.get("certificate-authority"),
        ca_pem=_decoded(cluster.get("certificate-authority-data"), "certificate-authority-data", description).decode()
        if cluster.get("certificate-authority-data")
        else None,
        insecure_skip_tls_verify=insecure,
        tls_server_name=cluster.get("tls-server-name"),
        proxy_url=cluster.get("proxy-url"),
        client_cert_file=user.get("client-certificate"),
        client_key_file=user.get("client-key"),
        client_cert_pem=_decoded(user.get("client-certificate-data"), "client-certificate-data", description),
        client_key_pem=_decoded(user.get("client-key-data"), "client-key-data", description),
        token=user.get("token"),
        token_file=user.get("tokenFile"),
        username=user.get("username"),
        password=user.get("password"),
        exec_plugin=exec_plugin,
    )


def in_cluster_access(environ: Mapping[str, str]) -> ClusterAccess | None:
    """The pod's service account, when running in a pod that has one."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not IN_CLUSTER_TOKEN.is_file():
        return None
    host = f"[{host}]" if ":" in host else host
    return ClusterAccess(
        server=f"https://{host}:{port}",
        description="in-cluster service account",
        ca_file=str(IN_CLUSTER_CA),
        token_file=str(IN_CLUSTER_TOKEN),
    )


def _resolve_paths(fields: dict, base: Path) -> dict:
    for key in ("certificate-authority", "client-certificate", "client-key", "tokenFile"):
        if fields.get(key):
            fields[key] = str(base / os.path.expanduser(fields[key]))
    spec = fields.get("exec")
    if isinstance(spec, dict) and spec.get("command") and os.sep in spec["command"]:
        fields["exec"] = {**spec, "command": str(base / os.path.expanduser(spec["command"]))}
    return fields


def _boolean(entry: Mapping, field: str, description: str) -> bool:
    """A YAML boolean, or absent (False). Anything else — "false" in quotes, 0, "yes" — is an error."""
    value = entry.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ClusterError(
            f"{description}: {field} must be true or false (unquoted), not {type(value).__name__} {value!r}"
        )
    return value


def _decoded(value: str | None, field: str, description: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ClusterError(f"{description}: {field} is not valid base64") from None
