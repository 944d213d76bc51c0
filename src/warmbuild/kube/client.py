"""An authenticated Kubernetes API client, and raw JSON requests through it.

Credentials, in order: --kubeconfig/--context given explicitly; WARMBUILD_K8S_SERVER with a token
(WARMBUILD_K8S_TOKEN, WARMBUILD_K8S_TOKEN_FILE, or the CI job's OIDC token for the audience in
WARMBUILD_K8S_OIDC_AUDIENCE, see oidc.py) and a CA (WARMBUILD_K8S_CA_FILE or
WARMBUILD_K8S_CA_DATA); $KUBECONFIG or ~/.kube/config (read as kubectl reads it, see kubeconfig.py);
the in-cluster service account. The user's kubeconfig is read, never written.

The transport is urllib3 itself, not the official `kubernetes` client: importing that package alone
took a quarter of a second of every CI step, more than the rest of warmbuild's own overhead.

Requests go out as raw JSON, not generated models: Lease times must be MicroTime with exactly six
fractional digits, and the server's Date header is the clock leases are judged by.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlencode

from .. import __version__
from ..errors import ClusterError, ClusterRefused, ClusterUnavailable
from .kubeconfig import ClusterAccess, ExecPlugin, in_cluster_access, kubeconfig_paths, read_kubeconfig

REQUEST_TIMEOUT_SECONDS = 15
CONNECT_TIMEOUT_SECONDS = 5
EXEC_TIMEOUT_SECONDS = 60
EXEC_REFRESH_MARGIN_SECONDS = 30
USER_AGENT = f"warmbuild/{__version__}"


@dataclass(frozen=True)
class KubeResponse:
    status: int
    body: dict
    server_time: datetime  # lower bound of the API server's clock when it answered


class KubeConflict(Exception):
    """409: someone else changed the object first (compare-and-swap lost), or it already exists."""


class KubeNotFound(Exception):
    pass


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _resource_from_path(path: str) -> tuple[str, str | None]:
    """'/apis/coordination.k8s.io/v1/namespaces/ns/leases/x' -> ('leases.coordination.k8s.io', 'ns')."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    group = parts[1] if parts and parts[0] == "apis" else ""
    namespace = None
    rest = parts[3:] if parts and parts[0] == "apis" else parts[2:]
    if len(rest) >= 2 and rest[0] == "namespaces":
        namespace = rest[1]
        rest = rest[2:]
    resource = rest[0] if rest else "?"
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    return (f"{resource}.{group}" if group else resource), namespace


def verb_for(method: str, path: str) -> str:
    if method == "GET":
        parts = [p for p in path.split("?")[0].split("/") if p]
        rest = parts[3:] if parts[0] == "apis" else parts[2:]
        if len(rest) >= 2 and rest[0] == "namespaces":
            rest = rest[2:]
        return "get" if len(rest) >= 2 else ("watch" if "watch=" in path else "list")
    return _VERBS.get(method, method.lower())


class KubeClient:
    """Raw JSON requests to one API server over a pooled, thread-safe urllib3 connection."""

    def __init__(self, access: ClusterAccess, credentials: Credentials | None = None):
        self.access = access
        self.description = access.description  # where the credentials came from, for messages
        self.credentials = credentials or Credentials(access)
        self._pool = _pool_manager(access, self.credentials.client_certificate())
        self._clock = ServerClock()
        # Called with (verb, resource) for every request sent, e.g. to count them in metrics.
        self.on_request: Callable[[str, str], None] | None = None

    def _note(self, method: str, path: str) -> None:
        if self.on_request is not None:
            self.on_request(verb_for(method, path), _resource_from_path(path)[0])

    def server_now(self) -> datetime:
        """The API server's clock, estimated from its Date headers (a lower bound)."""
        return self._clock.now()

    @property
    def host(self) -> str:
        return self.access.server

    def allow_concurrent_requests(self, count: int) -> None:
        """Keep up to `count` connections to the API server alive (the scheduler's request threads)."""
        self._pool.connection_pool_kw["maxsize"] = max(count, self._pool.connection_pool_kw.get("maxsize") or 1)

    def request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> KubeResponse:
        """One request. Without `timeout`: connect within 5 s (a refused connection is tried twice more),
        read within 15 s. With `timeout`: the whole request — connect, send, read — ends within that many
        seconds, tried once (the caller retries on its own schedule, as the slot keeper does)."""
        from urllib3.exceptions import HTTPError

        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(2):
            sent = time.time()
            self._note(method, path)
            try:
                if deadline is None:
                    response = self._open(method, path, body, query, content_type, REQUEST_TIMEOUT_SECONDS, False)
                else:
                    response = self._open_within(method, path, body, query, content_type, deadline - time.monotonic())
            except (HTTPError, OSError) as exc:
                raise self._unreachable(exc) from None
            # A token an exec plugin printed may be revoked before the expiry it gave: run the plugin
            # again once, as kubectl does. A 401 is an answer, not a side effect, so retrying is safe.
            if not (response.status == 401 and attempt == 0 and self.credentials.forget_exec_credential()):
                break
        status, data = response.status, response.data
        self._clock.observe(response.headers.get("Date"), sent, time.time())
        if status >= 400:
            self._raise_for(status, data, method, path)
        return KubeResponse(status, json.loads(data) if data else {}, self._clock.now())

    def _open(self, method: str, path: str, body, query, content_type: str, read_timeout: float, stream: bool):
        """The urllib3 response; with `stream` its body is not read yet (a watch reads it as it comes)."""
        import urllib3

        timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=read_timeout)
        retries = urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=0)
        return self._send(method, path, body, query, content_type, timeout, retries, stream)

    def _open_within(self, method: str, path: str, body, query, content_type: str, seconds: float):
        """The urllib3 response, read whole, within `seconds` in all (TimeoutError when none are left)."""
        import urllib3

        if seconds <= 0:
            raise TimeoutError("no time left for the request")
        timeout = urllib3.Timeout(total=seconds, connect=min(CONNECT_TIMEOUT_SECONDS, seconds), read=seconds)
        return self._send(method, path, body, query, content_type, timeout, urllib3.Retry(False), False)

    def _send(self, method: str, path: str, body, query, content_type: str, timeout, retries, stream: bool):
        headers = {"Accept": "application/json", "Content-Type": content_type, "User-Agent": USER_AGENT}
        authorization = self.credentials.authorization()
        if authorization:
            headers["Authorization"] = authorization
        url = self.host + path + (("&" if "?" in path else "?") + urlencode(query) if query else "")
        payload = None if body is None else json.dumps(body).encode()
        return self._pool.request(
            method,
            url,
            body=payload,
            headers=headers,
            preload_content=not stream,
            timeout=timeout,
            retries=retries,
        )

    def watch(self, path: str, query: Mapping[str, str] | None = None, timeout_seconds: int = 60):
        """Yield (event type, object) from a watch until the server ends it after `timeout_seconds`."""
        from urllib3.exceptions import HTTPError

        params = {**(query or {}), "watch": "true", "timeoutSeconds": str(timeout_seconds)}
        self._note("GET", path + "?watch=true")
        try:
            response = self._open("GET", path, None, params, "application/json", timeout_seconds + 5, stream=True)
        except (HTTPError, OSError) as exc:
            raise self._unreachable(exc) from None
        if response.status >= 400:
            data = response.data
            response.release_conn()
            self._raise_for(response.status, data, "GET", path + "?watch=true")
        try:
            buffered = b""
            for chunk in response.stream(4096, decode_content=True):
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        yield event.get("type"), event.get("object") or {}
        except (HTTPError, OSError) as exc:
            raise ClusterUnavailable(f"the watch on {path} broke: {exc}") from None
        finally:
            response.release_conn()

    def _unreachable(self, exc: BaseException) -> ClusterError:
        """The error for a request that got no HTTP answer. A certificate the client cannot verify is
        configuration (ClusterError); refused, reset, timed out, a handshake cut short are an outage
        that may end (ClusterUnavailable: placement waits it out within --max-wait)."""
        message = f"cannot reach the Kubernetes API at {self.host} ({self.description}): {exc}"
        if "certificate" in str(exc).lower():
            return ClusterError(message)
        return ClusterUnavailable(message)

    def _raise_for(self, status: int, data: bytes, method: str, path: str):
        try:
            details = json.loads(data or b"{}")
        except ValueError:
            details = {}
        message = details.get("message") or ""
        if status == 404:
            raise KubeNotFound(message) from None
        if status == 409:
            raise KubeConflict(message) from None
        if status == 403:
            resource, namespace = _resource_from_path(path)
            where = f" in namespace {namespace}" if namespace else ""
            if "denied request" in message:  # an admission policy, not RBAC: its own words say why
                raise ClusterError(
                    f"the API server refused to {verb_for(method, path)} {resource}{where}: "
                    f"{message.split('denied request: ', 1)[-1]}"
                ) from None
            raise ClusterRefused(
                f"missing permission: {verb_for(method, path)} {resource}{where} "
                f"({self.description}); grant it in the Role bound to this identity"
            ) from None
        if status == 401:
            raise ClusterRefused(
                f"the Kubernetes API at {self.host} rejected the credentials ({self.description}): "
                "the token is missing, expired or not trusted"
            ) from None
        if status >= 500 or status == 429:  # overloaded, restarting, or etcd unreachable behind it
            raise ClusterUnavailable(
                f"Kubernetes API error {status} on {method} {path.split('?')[0]}: {message or 'no message'}"
            ) from None
        raise ClusterError(f"Kubernetes API error {status} on {method} {path.split('?')[0]}: {message}") from None


class ServerClock:
    """Offset between this machine's clock and the API server's, from HTTP Date headers.

    A Date header is the server's time truncated to the second, stamped between our send and
    receive. So each response bounds the offset: Date - received <= offset < Date + 1 - sent.
    The bounds tighten as responses come in; `now()` uses the lower bound, so a lease is never
    judged expired earlier than the server itself would judge it.
    """

    def __init__(self) -> None:
        self.low: float | None = None
        self.high: float | None = None

    def observe(self, date_header: str | None, sent: float, received: float) -> None:
        if not date_header:
            return
        try:
            server = parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError):
            return
        low, high = server - received, server + 1.0 - sent
        if self.low is None or self.high is None or low > self.high or high < self.low:
            self.low, self.high = low, high  # first sample, or a clock jump: start over
            return
        self.low, self.high = max(self.low, low), min(self.high, high)

    def now(self) -> datetime:
        offset = self.low if self.low is not None else 0.0
        return datetime.fromtimestamp(time.time() + offset, timezone.utc)


def connect(
    kubeconfig: str | None = None, context: str | None = None, environ: Mapping[str, str] | None = None
) -> KubeClient:
    """Build an authenticated client from the first source of credentials that is configured."""
    environ = os.environ if environ is None else environ
    if kubeconfig or context:
        return KubeClient(read_kubeconfig(kubeconfig_paths(kubeconfig or environ.get("KUBECONFIG")), context))
    if environ.get("WARMBUILD_K8S_SERVER"):
        return _from_env(environ)
    paths = kubeconfig_paths(environ.get("KUBECONFIG"))
    if any(Path(p).is_file() for p in paths):
        return KubeClient(read_kubeconfig(paths))
    in_cluster = in_cluster_access(environ)
    if in_cluster:
        return KubeClient(in_cluster)
    raise ClusterError(
        "no Kubernetes credentials: set KUBECONFIG (or pass --kubeconfig), set WARMBUILD_K8S_SERVER and "
        "WARMBUILD_K8S_TOKEN, or run inside the cluster with a service account"
    )


def _from_env(environ: Mapping[str, str]) -> KubeClient:
    ca_data = environ.get("WARMBUILD_K8S_CA_DATA")
    try:
        ca_pem = (
            base64.b64decode(ca_data, validate=True).decode()
            if ca_data and not environ.get("WARMBUILD_K8S_CA_FILE")
            else None
        )
    except ValueError:
        raise ClusterError(
            "WARMBUILD_K8S_CA_DATA is not base64 of a PEM certificate: set it to `base64 -w0 ca.crt`"
        ) from None
    access = ClusterAccess(
        server=environ["WARMBUILD_K8S_SERVER"].rstrip("/"),
        description="WARMBUILD_K8S_SERVER and token",
        ca_file=environ.get("WARMBUILD_K8S_CA_FILE") or None,
        ca_pem=ca_pem,
        token=environ.get("WARMBUILD_K8S_TOKEN") or None,
        token_file=environ.get("WARMBUILD_K8S_TOKEN_FILE") or None,
    )
    if access.token or access.token_file:
        return KubeClient(access)
    if environ.get("WARMBUILD_K8S_OIDC_AUDIENCE"):
        # The CI job's OIDC identity (GitHub Actions): short-lived, re-minted before each expiry.
        from .oidc import GitHubOidcTokenSource

        source = GitHubOidcTokenSource.from_env(environ, environ["WARMBUILD_K8S_OIDC_AUDIENCE"])
        source.token()  # fail here, with one clear line, rather than at the first request
        return KubeClient(access, Credentials(access, token_source=source.token))
    raise ClusterError(
        "WARMBUILD_K8S_SERVER is set but no token: set WARMBUILD_K8S_TOKEN, WARMBUILD_K8S_TOKEN_FILE "
        "or WARMBUILD_K8S_OIDC_AUDIENCE (GitHub OIDC)"
    )


class Credentials:
    """The Authorization header for each request, and the TLS client certificate, of one ClusterAccess.

    Token files are re-read (projected service-account tokens rotate); exec plugins are run again
    when the credential they printed expires; a token source (OIDC) re-mints on its own schedule.
    """

    def __init__(self, access: ClusterAccess, token_source: Callable[[], str] | None = None):
        self.access = access
        self._token_source = token_source
        self._exec_lock = threading.Lock()
        self._exec_status: dict | None = None
        self._exec_expires_at: float | None = None

    def authorization(self) -> str | None:
        access = self.access
        if self._token_source:
            return f"Bearer {self._token_source()}"
        if access.token:
            return f"Bearer {access.token}"
        if access.token_file:
            try:
                return f"Bearer {Path(access.token_file).read_text().strip()}"
            except OSError as exc:
                raise ClusterError(
                    f"cannot read the token file {access.token_file} ({access.description}): {exc.strerror}"
                ) from None
        if access.exec_plugin:
            token = self._exec_credential().get("token")
            return f"Bearer {token}" if token else None
        if access.username and access.password is not None:
            return "Basic " + base64.b64encode(f"{access.username}:{access.password}".encode()).decode()
        return None

    def client_certificate(self) -> tuple[bytes, bytes] | None:
        """PEM certificate and key: from the kubeconfig, or from what the exec plugin printed."""
        access = self.access
        if access.client_cert_pem or access.client_cert_file:
            cert = access.client_cert_pem or _read_bytes(access.client_cert_file, access)
            key = access.client_key_pem or _read_bytes(access.client_key_file, access)
            return cert, key
        if access.exec_plugin:
            status = self._exec_credential()
            if status.get("clientCertificateData") and status.get("clientKeyData"):
                return status["clientCertificateData"].encode(), status["clientKeyData"].encode()
        return None

    def forget_exec_credential(self) -> bool:
        """Drop what the exec plugin printed, so the next request runs it again; False without one."""
        if self.access.exec_plugin is None or self._token_source or self.access.token or self.access.token_file:
            return False
        with self._exec_lock:
            self._exec_status = None
        return True

    def _exec_credential(self) -> dict:
        with self._exec_lock:
            fresh = self._exec_status is not None and (
                self._exec_expires_at is None or time.time() < self._exec_expires_at - EXEC_REFRESH_MARGIN_SECONDS
            )
            if not fresh:
                self._exec_status, self._exec_expires_at = run_exec_plugin(self.access.exec_plugin, self.access)
            return self._exec_status


def run_exec_plugin(plugin: ExecPlugin, access: ClusterAccess) -> tuple[dict, float | None]:
    """Run a client-go exec credential plugin; its ExecCredential status and when that expires."""
    info = {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    env = {**os.environ, **dict(plugin.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
    what = f"the exec credential plugin {plugin.command!r} ({access.description})"
    try:
        done = subprocess.run(
            [plugin.command, *plugin.args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=EXEC_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        raise ClusterError(
            f"{what} is not installed" + (f": {plugin.install_hint.strip()}" if plugin.install_hint else "")
        ) from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{what} did not answer within {EXEC_TIMEOUT_SECONDS:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ClusterError(f"{what} failed with exit code {done.returncode}: {last}")
    try:
        status = json.loads(done.stdout)["status"]
        if not isinstance(status, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ClusterError(f"{what} did not print an ExecCredential with a status") from None
    expires = parse_kube_time(status.get("expirationTimestamp"))
    return status, expires.timestamp() if expires else None


def _read_bytes(path: str | None, access: ClusterAccess) -> bytes:
    if not path:
        raise ClusterError(f"{access.description}: a client certificate needs both a certificate and a key")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClusterError(f"cannot read {path} ({access.description}): {exc.strerror}") from None


def _pool_manager(access: ClusterAccess, client_certificate: tuple[bytes, bytes] | None):
    """A urllib3 pool that trusts the cluster's CA (only it, when one is given) and presents the client certificate."""
    import ssl

    import urllib3

    if access.insecure_skip_tls_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=access.ca_file, cadata=access.ca_pem)
        except (OSError, ssl.SSLError) as exc:
            raise ClusterError(f"cannot load the cluster CA ({access.description}): {exc}") from None
    if client_certificate:
        _load_client_certificate(context, *client_certificate, access)
    options = {"ssl_context": context, "maxsize": 4, "block": False}
    if access.tls_server_name:
        options["server_hostname"] = access.tls_server_name
    if access.proxy_url:
        return urllib3.ProxyManager(access.proxy_url, **options)
    return urllib3.PoolManager(**options)


def _load_client_certificate(context, cert: bytes, key: bytes, access: ClusterAccess) -> None:
    """ssl reads a certificate chain only from files: a private directory that is gone right after."""
    import ssl

    with tempfile.TemporaryDirectory(prefix="warmbuild-tls-") as directory:
        cert_path, key_path = Path(directory) / "client.crt", Path(directory) / "client.key"
        for path, data in ((cert_path, cert), (key_path, key)):
            path.touch(mode=0o600)
            path.write_bytes(data)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise ClusterError(
                f"the client certificate or key is not usable ({access.description}): {exc.reason}"
            ) from None


def format_micro_time(moment: datetime) -> str:
    """MicroTime as the API server writes it: UTC, exactly six fractional digits, 'Z'."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_kube_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
