"""The scheduler's HTTP API (FastAPI on uvicorn, TLS): routes, auth, errors; docs/scheduler-openapi.yaml.

Routes are plain `def`s: placement and leases block on the Kubernetes API, so each request runs
in a worker thread (a long-poll holds one for up to its poll length; `max_concurrent` bounds them).
Every error is `{"error": "one line"}` (and a `code` where a client acts on it: "untrusted",
"not-your-slot", "limit"); 401/403 are counted in metrics.

Before any work a route checks, in order: the token (TokenReview, 401), the pool (grant, 403), the
caller's concurrent requests (429 with Retry-After), and for acquire the caller's trust: an
untrusted caller (its grant, its verified fork claims, or its own `untrusted: true`) never gets a
warm or spill slot; it gets an ephemeral builder the scheduler starts (`/ephemeral` tells when it is
Ready), or, from a scheduler without ephemeral settings, a 403 naming the way out. `/status` shows
holders, run URLs and workload keys to the pool's admins only; others see builders and busy slots.
With a gateway configured (`GatewayIssuer`), an acquire or renew that carries a `csr` is answered
with a grant certificate for the granted builder (the answer's `gateway` object); a CSR that cannot
be signed is a 400 before any slot is taken. An untrusted caller's ephemeral builder, started with
a CSR and a gateway, is made to accept the gateway (`GatewayIssuer.run_trust`) and its answer
carries the grant certificate and no private key (no `run_tls`); without a gateway the answer
still carries the run's client pair (`run_tls`, key included: docs/security.md, known limits).
"""

from __future__ import annotations

import signal
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

import anyio
from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError, LeaseLost, WarmbuildError
from ..gateway.certs import BadCsr
from ..kube.names import MAX_LEASE_SECONDS
from ..pool.placement import Grant
from ..pool.status import status_to_dict, without_holders
from .auth import AccessConfig, Caller, TokenReviewer, Unauthenticated
from .gateway import GatewayIssuer, GatewayOptions
from .limits import RequestLimiter, TooManyRequests
from .metrics import SchedulerMetrics
from .service import AcquireAsk, NotYours, OverLimit, SlotService, workload_key_for

POOL_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"  # a label value
LEASE_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"  # an object name
API_VERSION = "v1"


class _Strict(BaseModel):
    """JSON types as the OpenAPI file says: no `false` for a number, no 1 for a string."""

    model_config = ConfigDict(strict=True)


class AcquireBody(_Strict):
    workload_key: str = Field(min_length=1, max_length=1024)
    max_wait_seconds: float = Field(ge=0, le=86400)
    waited_seconds: float = Field(default=0, ge=0, le=86400)
    poll_seconds: float = Field(default=30, gt=0, le=3600)
    lease_seconds: int = Field(default=15, ge=3, le=MAX_LEASE_SECONDS)
    run_url: str = Field(default="", max_length=2048)
    holder_hint: str = Field(default="", max_length=200)
    fallback: Literal["wait", "fail"] = "wait"
    csr: str | None = Field(default=None, max_length=8192)  # PEM: a grant certificate through the gateway
    key_path: str = Field(default="", max_length=1024)  # the part of the key the job chose
    untrusted: bool = False  # the caller asks to be treated as untrusted (never the other way)
    # builders this caller's build already lost (a retry): never granted again
    avoid_builders: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(default=[], max_length=16)


class EphemeralBody(_Strict):
    holder: str = Field(min_length=1, max_length=512)
    release_token: str = Field(min_length=1, max_length=256)
    wait_seconds: float = Field(default=20, ge=0, le=300)


class RenewBody(_Strict):
    holder: str = Field(min_length=1, max_length=512)
    release_token: str = Field(min_length=1, max_length=256)
    transitions: int = Field(ge=0)
    csr: str | None = Field(default=None, max_length=8192)  # a fresh grant certificate with the renewal


class ReleaseBody(_Strict):
    holder: str = Field(min_length=1, max_length=512)
    release_token: str = Field(min_length=1, max_length=256)
    pool: str = Field(default="", max_length=63)
    path: Literal["warm", "spill", "ephemeral"] | None = None
    held_seconds: float | None = Field(default=None, ge=0, le=7 * 86400)


@dataclass(frozen=True)
class AppParts:
    service: SlotService
    reviewer: TokenReviewer
    access: AccessConfig
    metrics: SchedulerMetrics
    max_concurrent: int = 128
    limiter: RequestLimiter | None = None  # default: access.limits.concurrent_requests per identity
    gateway: GatewayIssuer | None = None  # signs grant certificates; None: CSRs are ignored (in-cluster only)


def grant_to_dict(grant: Grant) -> dict:
    lease, builder = grant.lease, grant.builder
    return {
        "lease": {
            "name": lease.name,
            "namespace": lease.namespace,
            "holder": lease.holder,
            "transitions": lease.transitions,
            "fencing_token": lease.fencing_token,
            "resource_version": lease.resource_version,
            "duration_seconds": lease.duration_seconds,
            "acquired_at": lease.acquired_at.isoformat(),
            "release_token": lease.release_token,
        },
        "builder": {
            "name": builder.name,
            "uid": builder.uid,
            "address": builder.address,
            "slots": builder.slots,
            "server_name": builder.server_name,
        },
        "path": grant.path,
        "affine": grant.affine,
        "affine_builder": grant.affine_builder,
        **run_tls_to_dict(grant),
    }


def run_tls_to_dict(grant: Grant) -> dict:
    """An ephemeral builder's per-run CA and client pair, for the one caller it was started for."""
    if grant.run_tls is None:
        return {}
    tls = grant.run_tls
    return {
        "run_tls": {
            "server_name": tls.server_name,
            "ca": tls.ca_pem.decode(),
            "cert": tls.cert_pem.decode(),
            "key": tls.key_pem.decode(),
        }
    }


def _error(status: int, message: str, headers: dict | None = None, code: str = "") -> JSONResponse:
    document = {"error": " ".join(str(message).split())}
    if code:
        document["code"] = code
    return JSONResponse(document, status_code=status, headers=headers)


def untrusted_message(who: Caller, why: str = "its grant says trusted: false") -> str:
    return (
        f"{who.username} is an untrusted caller ({why}): the scheduler never gives it "
        "a warm or spill slot and this one starts no ephemeral builders; build with Kubernetes credentials and an "
        "ephemeral builder instead (warmbuild build --pool P --fallback ephemeral, without --scheduler)"
    )


class _RequestTimer:
    """ASGI middleware: the request-latency histogram, labelled by route template and status code."""

    def __init__(self, app, metrics: SchedulerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        code = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                code[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.request_seconds.labels(route, str(code[0])).observe(time.perf_counter() - started)


def create_app(parts: AppParts) -> FastAPI:
    metrics = parts.metrics

    @asynccontextmanager
    async def lifespan(_app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = parts.max_concurrent
        yield

    # The contract is the hand-written docs/scheduler-openapi.yaml; FastAPI's generated one is off.
    app = FastAPI(title="warmbuild scheduler", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(_RequestTimer, metrics=metrics)
    _error_handlers(app)
    caller, allowed = _authorization(parts)
    limiter = parts.limiter or RequestLimiter(parts.access.limits.concurrent_requests)
    _slot_routes(app, parts, caller, allowed, limiter)
    _probe_routes(app, parts)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error is one JSON document with one line (`_error`), 400 naming the invalid field."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
        return _error(400, f"invalid request: {where}: {first.get('msg', 'invalid')}")


def _authorization(parts: AppParts):
    """The two checks every slot route makes: who calls (TokenReview) and whether they may use the pool."""
    metrics = parts.metrics

    def caller(request: Request) -> Caller:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            metrics.auth_failures.labels("401").inc()
            raise HTTPException(
                401,
                "missing bearer token: send 'Authorization: Bearer TOKEN' (a Kubernetes service account token)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            return parts.reviewer.review(token.strip())
        except Unauthenticated as exc:
            metrics.auth_failures.labels("401").inc()
            raise HTTPException(
                401, exc.message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            ) from None
        except WarmbuildError as exc:
            raise HTTPException(503, f"cannot review the token: {exc.message}") from None

    def allowed(who: Caller, pool: str) -> None:
        if not parts.access.may_use(who, pool):
            metrics.auth_failures.labels("403").inc()
            pools = ", ".join(sorted(parts.access.allowed_pools(who))) or "none"
            raise HTTPException(403, f"{who.username} may not use pool '{pool}' (allowed: {pools})")

    return caller, allowed


def _over_limit(message: str, retry_after: int) -> JSONResponse:
    return _error(429, message, headers={"Retry-After": str(retry_after)}, code="limit")


def _slot_routes(app: FastAPI, parts: AppParts, caller, allowed, limiter: RequestLimiter) -> None:
    service = parts.service
    pool_param = Path(pattern=POOL_PATTERN, max_length=63)
    lease_param = Path(pattern=LEASE_PATTERN, max_length=253)

    @app.post(f"/{API_VERSION}/pools/{{pool}}/acquire")
    def acquire(body: AcquireBody, pool: str = pool_param, who: Caller = Depends(caller)):
        allowed(who, pool)
        untrusted = body.untrusted or not parts.access.trusted(who)
        if untrusted and service.ephemeral is None:
            parts.metrics.auth_failures.labels("403").inc()
            return _error(403, untrusted_message(who, parts.access.untrusted_reason(who)), code="untrusted")
        refused = _check_csr(parts.gateway, body.csr)
        if refused is not None:
            return refused
        ask = AcquireAsk(pool=pool, **body.model_dump(exclude={"untrusted", "csr"}))
        try:
            with limiter.hold(who.username, "long"):
                if untrusted:
                    trust = parts.gateway.run_trust() if parts.gateway is not None and body.csr else None
                    answer = service.start_ephemeral(who, ask, gateway=trust)
                else:
                    answer = service.acquire(who, ask)
        except TooManyRequests as exc:
            return _over_limit(str(exc), exc.retry_after)
        except OverLimit as exc:
            return _over_limit(str(exc), exc.retry_after)
        except WarmbuildError as exc:
            return _error(503, exc.message)
        document = {"decision": answer.decision, "waited_seconds": answer.waited_seconds, "reason": answer.reason}
        if answer.grant is not None:
            document.update(grant_to_dict(answer.grant))
            document.update(_gateway_part(parts.gateway, body.csr, answer.grant.builder.name, body.lease_seconds))
        document.update(untrusted=untrusted, workload_key=workload_key_for(who, ask).value)
        return document

    @app.post(f"/{API_VERSION}/slots/{{lease}}/ephemeral")
    def ephemeral_status(body: EphemeralBody, lease: str = lease_param, who: Caller = Depends(caller)):
        try:
            with limiter.hold(who.username, "long"):
                status = service.ephemeral_status(who, lease, body.holder, body.release_token, body.wait_seconds)
        except TooManyRequests as exc:
            return _over_limit(str(exc), exc.retry_after)
        except NotYours as exc:
            return _error(403, str(exc), code="not-your-slot")
        except WarmbuildError as exc:
            return _error(503, exc.message)
        return {"ready": status.ready, "address": status.address, "failed": status.failed}

    @app.post(f"/{API_VERSION}/slots/{{lease}}/renew")
    def renew(body: RenewBody, lease: str = lease_param, who: Caller = Depends(caller)):
        try:
            with limiter.hold(who.username, "short"):
                renewed = service.renew(who, lease, body.holder, body.transitions, body.release_token)
        except TooManyRequests as exc:
            return _over_limit(str(exc), exc.retry_after)
        except NotYours as exc:
            return _error(403, str(exc), code="not-your-slot")
        except LeaseLost as exc:
            return _error(409, exc.message)
        except WarmbuildError as exc:
            return _error(503, exc.message)
        document = {
            "lease": renewed.name,
            "fencing_token": renewed.fencing_token,
            "resource_version": renewed.resource_version,
        }
        if renewed.builder:
            document.update(_gateway_part(parts.gateway, body.csr, renewed.builder, renewed.duration_seconds))
        return document

    @app.post(f"/{API_VERSION}/slots/{{lease}}/release")
    def release(body: ReleaseBody, lease: str = lease_param, who: Caller = Depends(caller)):
        try:
            with limiter.hold(who.username, "short"):
                released = service.release(
                    who, lease, body.holder, body.release_token, body.pool, body.path or "", body.held_seconds
                )
        except TooManyRequests as exc:
            return _over_limit(str(exc), exc.retry_after)
        except NotYours as exc:
            return _error(403, str(exc), code="not-your-slot")
        except WarmbuildError as exc:
            return _error(503, exc.message)
        return {"released": released}

    @app.get(f"/{API_VERSION}/pools/{{pool}}/status")
    def pool_status(pool: str = pool_param, who: Caller = Depends(caller)):
        allowed(who, pool)
        try:
            with limiter.hold(who.username, "long"):
                status = service.pool_status(pool)
        except TooManyRequests as exc:
            return _over_limit(str(exc), exc.retry_after)
        except WarmbuildError as exc:
            return _error(503, exc.message)
        return status_to_dict(status if parts.access.is_admin(who, pool) else without_holders(status))


def _check_csr(gateway: GatewayIssuer | None, csr: str | None) -> JSONResponse | None:
    """A 400 for a CSR the gateway's CA cannot sign; None when it can, or when there is no gateway."""
    if gateway is None or csr is None:
        return None
    try:
        gateway.check(csr)
    except BadCsr as exc:
        return _error(400, f"invalid request: csr: {exc}")
    return None


def _gateway_part(gateway: GatewayIssuer | None, csr: str | None, builder: str, lease_seconds: int) -> dict:
    """`{"gateway": ...}` with a grant certificate for `builder`, or nothing (no gateway or no CSR)."""
    if gateway is None or not csr:
        return {}
    try:
        return {"gateway": gateway.issue(csr, builder, lease_seconds)}
    except BadCsr:  # checked before the slot was taken; a builder name the gateway cannot route
        return {}


def _probe_routes(app: FastAPI, parts: AppParts) -> None:
    service, metrics = parts.service, parts.metrics

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        try:
            if service.ready():
                return {"status": "ready"}
            return _error(503, "shutting down")
        except WarmbuildError as exc:
            return _error(503, f"not ready: {exc.message}")

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--listen {text!r} must be HOST:PORT, e.g. 127.0.0.1:8443")
    return host.strip("[]"), int(port)


def serve(
    listen: str,
    tls_cert: str,
    tls_key: str,
    namespace: str,
    auth_config: str,
    kubeconfig: str | None = None,
    kube_context: str | None = None,
    max_poll_seconds: float = 30.0,
    max_concurrent: int = 128,
    pool_watch: bool = True,
    ephemeral_config: str | None = None,
    gateway: GatewayOptions = GatewayOptions(),
) -> None:
    """Run the scheduler until SIGTERM/SIGINT; long-polls answer "wait" at once when it comes."""
    import uvicorn
    from prometheus_client import disable_created_metrics

    from ..kube.client import connect
    from ..pool.status import read_pool_status
    from .auth import load_access_config

    host, port = parse_listen(listen)
    for path, flag in ((tls_cert, "--tls-cert"), (tls_key, "--tls-key")):
        if not path:
            raise InputError(f"{flag} is required: the scheduler serves HTTPS only")
        try:
            open(path, "rb").close()
        except OSError as exc:
            raise InputError(f"{flag} {path}: {exc.strerror or exc}") from None
    if not 0 < max_poll_seconds <= 300:
        raise InputError("--max-poll-seconds must be more than 0 and at most 300")
    access = load_access_config(auth_config)
    ephemeral = None
    if ephemeral_config:
        from ..pool.ephemeral import load_ephemeral_settings

        ephemeral = load_ephemeral_settings(ephemeral_config)
    issuer = GatewayIssuer.from_options(gateway)
    disable_created_metrics()  # no *_created series: they double the output and nothing here uses them
    client = connect(kubeconfig, kube_context)
    client.allow_concurrent_requests(max_concurrent)
    metrics = SchedulerMetrics(access.pools, lambda pool: read_pool_status(client, namespace, pool))
    client.on_request = metrics.count_kube_request
    service = SlotService(
        client,
        namespace,
        metrics,
        max_poll_seconds=max_poll_seconds,
        limits=access.limits,
        watch_pools=pool_watch,
        ephemeral=ephemeral,
    )
    app = create_app(
        AppParts(service, TokenReviewer(client, access.audiences), access, metrics, max_concurrent, gateway=issuer)
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.stop_waiting()
            super().handle_exit(sig, frame)

    # A short graceful stop: long-polls answer at once (stop_waiting), other requests take < 1 s; an
    # idle kept-alive TLS connection would otherwise hold the stop until its close_notify times out.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        lifespan="on",
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)  # uvicorn re-raises the stop signal after a clean shutdown
    server = _Server(config)
    print(
        f"warmbuild scheduler: serving https://{host}:{port} for namespace {namespace}, "
        f"pools {', '.join(access.pools)}",
        flush=True,
    )
    server.run()
    if not server.started:
        raise InputError(f"the scheduler could not listen on {listen} (see the message above)")
