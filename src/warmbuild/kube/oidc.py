"""A Kubernetes bearer token from the CI job's OIDC identity, re-minted before it expires.

GitHub Actions hands a job `ACTIONS_ID_TOKEN_REQUEST_URL` and `ACTIONS_ID_TOKEN_REQUEST_TOKEN`
(with `permissions: id-token: write`); a GET on that URL with an `audience` returns a signed JWT
that an API server configured for GitHub's issuer accepts. Those tokens live minutes, shorter
than a long build, so `cluster` asks `token()` before each request, and it fetches a new token
when the current one is within `REFRESH_MARGIN` seconds of its `exp`.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Mapping

from ..errors import ClusterError

REFRESH_MARGIN_SECONDS = 60.0
ASSUMED_LIFETIME_SECONDS = 300.0  # when a token's exp cannot be read
REQUEST_TIMEOUT_SECONDS = 10.0


def now() -> float:
    return time.time()


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim (Unix seconds) of a JWT, read without verifying it (the API server verifies)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class GitHubOidcTokenSource:
    """Mints ID tokens for one audience; caches each until shortly before it expires."""

    def __init__(self, request_url: str, request_token: str, audience: str, clock: Callable[[], float] | None = None):
        self.request_url = request_url
        self.request_token = request_token
        self.audience = audience
        self.clock = clock or now
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str], audience: str) -> GitHubOidcTokenSource:
        url = environ.get("ACTIONS_ID_TOKEN_REQUEST_URL")
        token = environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        if not url or not token:
            raise ClusterError(
                "an OIDC audience is set but the job has no OIDC token to request: give the job "
                "'permissions: id-token: write' (ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN are missing)"
            )
        return cls(url, token, audience)

    def token(self) -> str:
        with self._lock:
            if self._token is None or self.clock() >= self._expires_at - REFRESH_MARGIN_SECONDS:
                self._token = self._mint()
                now = self.clock()
                self._expires_at = jwt_expiry(self._token) or (now + ASSUMED_LIFETIME_SECONDS)
            return self._token

    def _mint(self) -> str:
        import requests

        try:
            response = requests.get(
                self.request_url,
                params={"audience": self.audience},
                headers={"Authorization": f"Bearer {self.request_token}", "Accept": "application/json"},
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except requests.RequestException as exc:
            raise ClusterError(f"could not request the job's OIDC token: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ClusterError(
                f"the job's OIDC token request was refused (HTTP {response.status_code}): "
                "check 'permissions: id-token: write' and the audience"
            )
        try:
            value = response.json()["value"]
        except (ValueError, KeyError, TypeError):
            value = None
        if not isinstance(value, str) or not value:
            raise ClusterError("the job's OIDC token response carried no token ('value' is missing)")
        return value
