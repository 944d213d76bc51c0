"""An authenticated Kubernetes API client, and raw JSON requests through it.

Credentials, in order: --kubeconfig/--context given explicitly; WARMBUILD_K8S_SERVER with a token
(WARMBUILD_K8S_TOKEN, WARMBUILD_K8S_TOKEN_FILE, or the CI job's OIDC token for the audience in
WARMBUILD_K8S_OIDC_AUDIENCE, see oidc.py) and a CA (WARMBUILD_K8S_CA_FILE or
WARMBUILD_K8S_CA_DATA); $KUBECONFIG or ~/.kube/config (exec credential plugins and OIDC as the
kubeconfig says); the in-cluster service account. The user's kubeconfig is read, never written.

Requests go out as raw JSON, not generated models: Lease times must be MicroTime with exactly six
fractional digits, and the server's Date header is the clock leases are judged by.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Mapping

from .errors import ClusterError

IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
IN_CLUSTER_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
REQUEST_TIMEOUT_SECONDS = 15


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


class _ErrorResponse:
    """An ApiException shaped like the urllib3 response the newer client returns."""

    def __init__(self, exc):
        self.status = exc.status
        body = exc.body or b""
        self.data = body if isinstance(body, bytes) else body.encode()
        self.headers = exc.headers or {}

    def release_conn(self) -> None:
        pass

    def stream(self, *_args, **_kwargs):
        return iter(())


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
    """Thin wrapper over the official client's ApiClient: auth, TLS, retries are its job."""

    def __init__(self, api_client, description: str):
        self.api_client = api_client
        self.description = description  # where the credentials came from, for messages
        self._clock = ServerClock()

    def server_now(self) -> datetime:
        """The API server's clock, estimated from its Date headers (a lower bound)."""
        return self._clock.now()

    @property
    def host(self) -> str:
        return self.api_client.configuration.host

    def request(self, method: str, path: str, body: dict | None = None, query: Mapping[str, str] | None = None,
                content_type: str = "application/json") -> KubeResponse:
        from urllib3.exceptions import HTTPError

        sent = time.time()
        try:
            status, data, headers = self._send(method, path, body, query, content_type)
        except (HTTPError, OSError) as exc:
            raise ClusterError(f"cannot reach the Kubernetes API at {self.host} ({self.description}): {exc}") from None
        self._clock.observe(headers.get("Date") if headers else None, sent, time.time())
        if status >= 400:
            self._raise_for(status, data, method, path)
        return KubeResponse(status, json.loads(data) if data else {}, self._clock.now())

    def _send(self, method: str, path: str, body, query, content_type: str, timeout=REQUEST_TIMEOUT_SECONDS):
        """One HTTP exchange through the official client (auth headers, TLS, token refresh)."""
        response = self._open(method, path, body, query, content_type, timeout)
        try:
            return response.status, response.data, response.headers
        finally:
            response.release_conn()

    def _open(self, method: str, path: str, body, query, content_type: str, timeout):
        """The urllib3 response, body not yet read (a watch streams it)."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        query_params = list((query or {}).items())
        client = self.api_client
        try:
            if hasattr(client, "param_serialize"):  # kubernetes >= 35: generated by the newer openapi-generator
                method, url, header_params, serialized, post_params = client.param_serialize(
                    method, path, query_params=query_params, header_params=headers, body=body, auth_settings=["BearerToken"]
                )
                return client.call_api(method, url, header_params=header_params, body=serialized,
                                       post_params=post_params, _request_timeout=timeout).response
            raw, _status, _headers = client.call_api(
                path, method, query_params=query_params, header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=False,
                _request_timeout=timeout,
            )
            return raw
        except ApiException as exc:  # older clients raise for non-2xx; present it as a response
            return _ErrorResponse(exc)

    def watch(self, path: str, query: Mapping[str, str] | None = None, timeout_seconds: int = 60):
        """Yield (event type, object) from a watch until the server ends it after `timeout_seconds`."""
        from urllib3.exceptions import HTTPError

        params = {**(query or {}), "watch": "true", "timeoutSeconds": str(timeout_seconds)}
        try:
            response = self._open("GET", path, None, params, "application/json", (5, timeout_seconds + 5))
        except (HTTPError, OSError) as exc:
            raise ClusterError(f"cannot reach the Kubernetes API at {self.host} ({self.description}): {exc}") from None
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
            raise ClusterError(f"the watch on {path} broke: {exc}") from None
        finally:
            response.release_conn()

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
            raise ClusterError(
                f"missing permission: {verb_for(method, path)} {resource}{where} "
                f"({self.description}); grant it in the Role bound to this identity"
            ) from None
        if status == 401:
            raise ClusterError(
                f"the Kubernetes API at {self.host} rejected the credentials ({self.description}): "
                "the token is missing, expired or not trusted"
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


def connect(kubeconfig: str | None = None, context: str | None = None, environ: Mapping[str, str] | None = None) -> KubeClient:
    """Build an authenticated client from the first source of credentials that is configured."""
    from kubernetes import client, config

    environ = os.environ if environ is None else environ
    try:
        if kubeconfig or context:
            path = kubeconfig or environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
            return KubeClient(_from_kubeconfig(path, context), f"kubeconfig {path}" + (f", context {context}" if context else ""))
        if environ.get("WARMBUILD_K8S_SERVER"):
            return KubeClient(_from_env(environ), "WARMBUILD_K8S_SERVER and token")
        path = environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
        if Path(path).is_file():
            return KubeClient(_from_kubeconfig(path, None), f"kubeconfig {path}")
        if environ.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.is_file():
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return KubeClient(client.ApiClient(configuration), "in-cluster service account")
    except config.ConfigException as exc:
        raise ClusterError(f"cannot load Kubernetes credentials: {exc}") from None
    raise ClusterError(
        "no Kubernetes credentials: set KUBECONFIG (or pass --kubeconfig), set WARMBUILD_K8S_SERVER and "
        "WARMBUILD_K8S_TOKEN, or run inside the cluster with a service account"
    )


def _from_kubeconfig(path: str, context: str | None):
    from kubernetes import config

    if not Path(path).is_file():
        raise ClusterError(f"kubeconfig {path} does not exist")
    return config.new_client_from_config(config_file=path, context=context, persist_config=False)


def _from_env(environ: Mapping[str, str]):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = environ["WARMBUILD_K8S_SERVER"]
    token = environ.get("WARMBUILD_K8S_TOKEN")
    token_file = environ.get("WARMBUILD_K8S_TOKEN_FILE")
    if not token and token_file:
        token = Path(token_file).read_text().strip()
    if not token and environ.get("WARMBUILD_K8S_OIDC_AUDIENCE"):
        # The CI job's OIDC identity (GitHub Actions): short-lived, re-minted before each expiry.
        from .oidc import GitHubOidcTokenSource

        source = GitHubOidcTokenSource.from_env(environ, environ["WARMBUILD_K8S_OIDC_AUDIENCE"])
        configuration.refresh_api_key_hook = source.refresh_hook
        token = source.token()  # fail here, with one clear line, rather than at the first request
    if not token:
        raise ClusterError(
            "WARMBUILD_K8S_SERVER is set but no token: set WARMBUILD_K8S_TOKEN, WARMBUILD_K8S_TOKEN_FILE "
            "or WARMBUILD_K8S_OIDC_AUDIENCE (GitHub OIDC)"
        )
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    if environ.get("WARMBUILD_K8S_CA_FILE"):
        configuration.ssl_ca_cert = environ["WARMBUILD_K8S_CA_FILE"]
    elif environ.get("WARMBUILD_K8S_CA_DATA"):
        ca = tempfile.NamedTemporaryFile("wb", prefix="warmbuild-ca-", suffix=".crt", delete=False)
        ca.write(base64.b64decode(environ["WARMBUILD_K8S_CA_DATA"]))
        ca.close()
        configuration.ssl_ca_cert = ca.name
    return client.ApiClient(configuration)


def format_micro_time(moment: datetime) -> str:
    """MicroTime as the API server writes it: UTC, exactly six fractional digits, 'Z'."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_kube_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
