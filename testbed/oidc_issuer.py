#!/usr/bin/env python3
"""oidc_issuer.py: a stand-in for GitHub Actions' and GitLab CI's OIDC issuers, on loopback.

The one part of the off-cluster path that cannot run here is a CI platform's token issuer, so this
behaves like one at its interface: HTTPS (a CA the testbed makes), per issuer a discovery document
at `<issuer>/.well-known/openid-configuration` and a JWKS, and RS256 ID tokens whose claims carry
the real names and shapes of GitHub's and GitLab's tokens (strings, as they send them). The real
kube-apiserver verifies them through its AuthenticationConfiguration (testbed/controlplane.sh).

Three issuers share one listener, told apart by path (an issuer URL may have a path):

    https://127.0.0.4:9443/github    GitHub-shaped tokens (configured in the API server)
    https://127.0.0.4:9443/gitlab    GitLab-shaped tokens (configured in the API server)
    https://127.0.0.4:9443/unknown   a valid issuer the API server does not know (for the tests)

GitHub's token request, as a job sees it: `GET <issuer>/token-request?audience=AUD` with
`Authorization: Bearer <request token>` answers `{"value": JWT}`, like ACTIONS_ID_TOKEN_REQUEST_URL.
A request token is registered with `POST <issuer>/jobs` (body: claim overrides) → {request_url,
request_token}; the stand-in keeps them in memory.

Usage:
  oidc_issuer.py --state-dir DIR serve              make the keys and certificate once, then serve
  oidc_issuer.py --state-dir DIR mint --issuer github --audience AUD [--expires-in S] [--claim K=V ...]

Tests import `mint` (and `github_claims`, `gitlab_claims`) from this file; it reads the signing
keys from the state directory, so minting needs no request to the server.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import secrets
import ssl
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.4"
PORT = 9443
BASE_URL = f"https://{HOST}:{PORT}"
ISSUERS = ("github", "gitlab", "unknown")
TOKEN_SECONDS = 300  # GitHub's ID tokens live 5 minutes (GitLab's default: the job's timeout)


def issuer_url(name: str) -> str:
    return f"{BASE_URL}/{name}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(number: int) -> str:
    return _b64(number.to_bytes((number.bit_length() + 7) // 8, "big"))


# -- claims shaped like the real platforms' ---------------------------------------------------------


def github_claims(
    repository: str = "octo-org/octo-repo", event_name: str = "push", ref: str = "refs/heads/main", **overrides
) -> dict:
    """Claims as GitHub Actions puts them in a job's ID token (all strings). A pull_request-like
    event gets GitHub's shapes: sub `repo:R:pull_request`, ref `refs/pull/N/merge`, head/base refs."""
    owner = repository.split("/")[0]
    pull = event_name in ("pull_request", "pull_request_target")
    if event_name == "pull_request" and ref == "refs/heads/main":
        ref = "refs/pull/7/merge"
    ref_type = "tag" if ref.startswith("refs/tags/") else "branch"
    claims = {
        "jti": str(uuid.uuid4()),
        "sub": f"repo:{repository}:pull_request" if pull else f"repo:{repository}:ref:{ref}",
        "ref": ref,
        "ref_type": ref_type,
        "ref_protected": "true" if ref in ("refs/heads/main",) and not pull else "false",
        "sha": "d6f1a1f5b2c43e4c7a9bd6c0c1b1e0f7a8b9c0d1",
        "repository": repository,
        "repository_owner": owner,
        "repository_owner_id": "1001",
        "repository_id": "2002",
        "repository_visibility": "private",
        "run_id": "3003",
        "run_number": "12",
        "run_attempt": "1",
        "actor": "octocat",
        "actor_id": "4004",
        "workflow": "CI",
        "workflow_ref": f"{repository}/.github/workflows/ci.yml@{ref}",
        "workflow_sha": "d6f1a1f5b2c43e4c7a9bd6c0c1b1e0f7a8b9c0d1",
        "job_workflow_ref": f"{repository}/.github/workflows/ci.yml@{ref}",
        "job_workflow_sha": "d6f1a1f5b2c43e4c7a9bd6c0c1b1e0f7a8b9c0d1",
        "head_ref": "feature" if pull else "",
        "base_ref": "main" if pull else "",
        "event_name": event_name,
        "runner_environment": "github-hosted",
    }
    claims.update(overrides)
    return claims


def gitlab_claims(
    project_path: str = "my-group/my-project", pipeline_source: str = "push", ref: str = "main", **overrides
) -> dict:
    """Claims as GitLab CI/CD puts them in an `id_tokens` token (strings; ref is the short name)."""
    namespace = project_path.rsplit("/", 1)[0]
    ref_type = overrides.get("ref_type", "branch")
    claims = {
        "jti": str(uuid.uuid4()),
        "sub": f"project_path:{project_path}:ref_type:{ref_type}:ref:{ref}",
        "namespace_id": "72",
        "namespace_path": namespace,
        "project_id": "20",
        "project_path": project_path,
        "project_visibility": "private",
        "user_id": "1",
        "user_login": "sample-user",
        "user_access_level": "developer",
        "pipeline_id": "574",
        "pipeline_source": pipeline_source,
        "job_id": "302",
        "ref": ref,
        "ref_type": ref_type,
        "ref_path": f"refs/{'tags' if ref_type == 'tag' else 'heads'}/{ref}",
        "ref_protected": "true" if ref == "main" and pipeline_source != "merge_request_event" else "false",
        "runner_id": "1",
        "runner_environment": "self-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "ci_config_ref_uri": f"gitlab.example.com/{project_path}//.gitlab-ci.yml@refs/heads/{ref}",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
    }
    claims.update(overrides)
    return claims


SHAPES = {"github": github_claims, "gitlab": gitlab_claims, "unknown": github_claims}


# -- keys, certificate, signing ---------------------------------------------------------------------


def _key_path(state_dir: Path, issuer: str) -> Path:
    return state_dir / f"{issuer}.key"


def ensure_material(state_dir: Path) -> None:
    """The CA, the server certificate for HOST and one RSA signing key per issuer, made once."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    if (state_dir / ".complete").exists():
        return

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    now = datetime.now(timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warmbuild testbed OIDC issuer CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (state_dir / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (state_dir / "tls.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (state_dir / "tls.key").write_bytes(pem_key(server_key))
    for issuer in ISSUERS:
        _key_path(state_dir, issuer).write_bytes(
            pem_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        )
    for path in state_dir.glob("*.key"):
        path.chmod(0o600)
    (state_dir / ".complete").touch()


def _signing_key(state_dir: Path, issuer: str):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(_key_path(state_dir, issuer).read_bytes(), password=None)


def key_id(state_dir: Path, issuer: str) -> str:
    import hashlib

    numbers = _signing_key(state_dir, issuer).public_key().public_numbers()
    return hashlib.sha256(f"{numbers.n}:{numbers.e}".encode()).hexdigest()[:16]


def jwks(state_dir: Path, issuer: str) -> dict:
    numbers = _signing_key(state_dir, issuer).public_key().public_numbers()
    return {
        "keys": [
            {
                "kty": "RSA",
                "alg": "RS256",
                "use": "sig",
                "kid": key_id(state_dir, issuer),
                "n": _uint(numbers.n),
                "e": _uint(numbers.e),
            }
        ]
    }


def discovery(issuer: str) -> dict:
    url = issuer_url(issuer)
    return {
        "issuer": url,
        "jwks_uri": f"{url}/.well-known/jwks",
        "subject_types_supported": ["public", "pairwise"],
        "response_types_supported": ["id_token"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": sorted(SHAPES[issuer]()),
        "scopes_supported": ["openid"],
    }


def mint(
    issuer: str,
    audience: str | list[str],
    claims: dict | None = None,
    expires_in: int = TOKEN_SECONDS,
    state_dir: str | Path | None = None,
    signed_by: str | None = None,
) -> str:
    """A signed ID token of `issuer` (github, gitlab or unknown) for `audience`: the platform's
    default claims with `claims` laid over them; `expires_in` may be negative (an expired token);
    `signed_by` another issuer's key (a forged signature)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    state = Path(state_dir) if state_dir else default_state_dir()
    now = int(time.time())
    body = {**SHAPES[issuer](), **(claims or {})}
    body.update(iss=issuer_url(issuer), aud=audience, iat=now - 5, nbf=now - 5, exp=now + expires_in)
    if expires_in < 0:
        body.update(iat=now + expires_in - TOKEN_SECONDS, nbf=now + expires_in - TOKEN_SECONDS)
    signer = signed_by or issuer
    header = {"alg": "RS256", "typ": "JWT", "kid": key_id(state, signer)}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
    signature = _signing_key(state, signer).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def default_state_dir() -> Path:
    import os

    return Path(os.environ.get("WARMBUILD_TESTBED_DIR", "/var/tmp/warmbuild-testbed")) / "oidc"


# -- the HTTPS server -------------------------------------------------------------------------------


class _Jobs:
    """GitHub-style request tokens → claim overrides, in memory."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_token: dict[str, tuple[str, dict]] = {}

    def add(self, issuer: str, claims: dict) -> str:
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.by_token[token] = (issuer, claims)
        return token

    def get(self, token: str) -> tuple[str, dict] | None:
        with self.lock:
            return self.by_token.get(token)


def make_handler(state_dir: Path, jobs: _Jobs):
    class Handler(BaseHTTPRequestHandler):
        server_version = "warmbuild-testbed-oidc"

        def log_message(self, fmt, *args):  # one line per request, never a token
            sys.stderr.write(f"oidc: {self.command} {urlsplit(self.path).path} {args[1] if len(args) > 1 else ''}\n")

        def _send(self, status: int, document: dict) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self) -> tuple[str, str]:
            parts = urlsplit(self.path).path.strip("/").split("/", 1)
            issuer = parts[0] if parts and parts[0] in ISSUERS else ""
            return issuer, parts[1] if len(parts) > 1 else ""

        def do_GET(self):
            issuer, rest = self._route()
            if not issuer:
                return self._send(404, {"error": "no such issuer"})
            if rest == ".well-known/openid-configuration":
                return self._send(200, discovery(issuer))
            if rest == ".well-known/jwks":
                return self._send(200, jwks(state_dir, issuer))
            if rest == "token-request":
                scheme, _, token = self.headers.get("Authorization", "").partition(" ")
                job = jobs.get(token.strip()) if scheme.lower() == "bearer" else None
                if job is None or job[0] != issuer:
                    return self._send(401, {"message": "Bad credentials"})
                audience = parse_qs(urlsplit(self.path).query).get("audience", [""])[0]
                if not audience:
                    return self._send(400, {"message": "audience is required"})
                return self._send(200, {"count": 1, "value": mint(issuer, audience, job[1], state_dir=state_dir)})
            return self._send(404, {"error": "not found"})

        def do_POST(self):
            issuer, rest = self._route()
            if not issuer or rest != "jobs":
                return self._send(404, {"error": "not found"})
            length = int(self.headers.get("Content-Length") or 0)
            try:
                claims = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return self._send(400, {"error": "body must be a JSON object of claims"})
            if not isinstance(claims, dict):
                return self._send(400, {"error": "body must be a JSON object of claims"})
            token = jobs.add(issuer, claims)
            return self._send(201, {"request_url": f"{issuer_url(issuer)}/token-request", "request_token": token})

    return Handler


def serve(state_dir: Path) -> None:
    ensure_material(state_dir)
    server = ThreadingHTTPServer((HOST, PORT), make_handler(state_dir, _Jobs()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(state_dir / "tls.crt", state_dir / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"oidc: serving {', '.join(issuer_url(i) for i in ISSUERS)}", file=sys.stderr, flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    sub.add_parser("init", help="make the keys and certificate (once) and exit")
    minting = sub.add_parser("mint")
    minting.add_argument("--issuer", choices=ISSUERS, default="github")
    minting.add_argument("--audience", required=True)
    minting.add_argument("--expires-in", type=int, default=TOKEN_SECONDS)
    minting.add_argument("--claim", action="append", default=[], help="NAME=VALUE, laid over the defaults")
    args = parser.parse_args(argv)
    state_dir = args.state_dir or default_state_dir()
    if args.command == "serve":
        serve(state_dir)
    elif args.command == "init":
        ensure_material(state_dir)
    else:
        claims = dict(item.split("=", 1) for item in args.claim)
        print(mint(args.issuer, args.audience, claims, args.expires_in, state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
