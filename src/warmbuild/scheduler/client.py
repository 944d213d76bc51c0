"""The scheduler's client: a `SlotBroker` over HTTPS, for runners without Lease permissions.

Needs only `requests`. Several scheduler replicas may be given, as comma-separated URLs
(`--scheduler https://a:8443,https://b:8443`), or as one name that resolves to several addresses
(a headless Service: urllib3 tries each address of the name in turn when it connects). A request
that cannot be answered (connection refused or reset, connect timeout, 5xx, malformed JSON) goes
to the next replica at once, with a short backoff after each round over all of them, for a bounded
number of rounds. So a replica killed while a caller waits on it costs that caller well under 2 s:
the broken long-poll is re-sent to the next replica at once (a refused or reset connection fails
within milliseconds; one that is gone without a reset within the 1.5 s connect timeout). A replica
that hangs mid-poll (stopped, not dead) is noticed only at the poll's read timeout.
A scheduler that never answered this client is a clear error within seconds (a wrong URL or CA);
once one has answered — a scheduler's JSON error counts: a 503 while the API server behind it
restarts is an answer from a live replica — every replica being unreachable or answering 5xx at once (a rollout, a restart) is waited
through within --max-wait, with one line, then the same error. 401/403 and other 4xx answers are
not retried. A renewal has a budget instead
(under a third of the lease duration, `pool.leases.renew_timeout`): its attempts, timeouts and
backoffs all end within it, and the keeper (`SchedulerKeeper`, the rule of `pool.leases.SlotKeeper`)
retries an unreachable scheduler through an outage; only 409 (LeaseLost) aborts the build.

An untrusted caller (its own --untrusted, or the scheduler's verdict on its grant or verified CI
claims) gets an ephemeral builder the scheduler started: the grant says `untrusted`, carries the run
Lease, the pod's name and its per-run certificates; `wait_ready` asks the scheduler until the pod is
Ready; release deletes it. Through the gateway (the acquire's CSR, a scheduler with a gateway) the
grant carries no run certificates and no key of the scheduler's making: like a warm grant, the
grant certificate for the pod's name and the runner's own key; `wait_ready` then also waits until
the gateway routes the pod's name (its map follows Ready pods within a moment). The key sent names the part the job chose (`key_path`) besides the whole
key: a caller with a verified repository gets that repository's key, whatever it sends.

Acquire is a long-poll loop: each request waits at most `poll_seconds` on the server; a "wait"
answer means poll again, reporting how long we have waited, until "granted" or "fallback". A 429
(this identity is at its limit) is waited out for its Retry-After, and polled again.

A grant carries a release token: the proof, to the scheduler, that this caller took the slot. It
lives in the grant's `SlotLease.release_token` (never in a repr) and in the 0600 state file for
`warmbuild release`; it is sent only in renew and release bodies and never logged.

Through the gateway (runners outside the cluster): every acquire carries a CSR for a key made in
the job's private directory (`pool.state.private_state_dir`, 0700; the key never leaves it); a
scheduler with a gateway answers a grant with a certificate for that builder alone, the gateway's
address, the name to ask it for and its CA (`gateway` in the answer). The grant then carries a
`GatewayRoute` to those files, and each renewal brings a fresh certificate (written over the old
one atomically), so a connection opened late in a build still has a valid one. The directory goes
with the release. A scheduler without a gateway ignores the CSR: the build connects to the pod.

The token sent is one minted for the scheduler's audience (default `warmbuild-scheduler`): in a pod,
a projected service account token at PROJECTED_TOKEN (the chart's examples mount one there), else
--scheduler-token-file / WARMBUILD_SCHEDULER_TOKEN(_FILE) (a GitLab job's `id_tokens` variable, a
Jenkins credential file), else on GitHub Actions the job's own OIDC token for
WARMBUILD_SCHEDULER_OIDC_AUDIENCE (`kube.oidc.GitHubOidcTokenSource`, re-minted before it expires, so a
long build still renews); the pod's own API-server token is the last resort, accepted only by a
scheduler configured with `audiences: []`.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests

from ..errors import BuilderStartFailed, ClusterError, ClusterUnavailable, InputError, LeaseLost, NoSlotAvailable
from ..gateway.certs import ClientKey
from ..kube.kubeconfig import IN_CLUSTER_TOKEN
from ..kube.oidc import GitHubOidcTokenSource
from ..pool.leases import SlotKeeper, SlotLease
from ..pool.membership import Builder
from ..pool.placement import GatewayRoute, Grant, PlacementRequest
from ..pool.run_certs import RunTls
from ..pool.state import private_state_dir

PROJECTED_TOKEN = Path("/var/run/secrets/warmbuild.dev/scheduler/token")
CONNECT_TIMEOUT_SECONDS = 1.5  # a replica that is gone (no RST) costs at most this before the next is asked
OUTAGE_RETRY_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 20.0
ROUNDS = 3
BACKOFF_SECONDS = 0.25
KNOWN_DECISIONS = ("granted", "wait", "fallback")


class SchedulerError(ClusterError):
    """The scheduler refused or could not answer (exit 6, like other cluster access problems)."""


class SchedulerUnavailable(SchedulerError, ClusterUnavailable):
    """No replica answered within the retries."""


class SchedulerBusy(SchedulerError):
    """429: this identity is at one of its limits; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class UntrustedRefused(NoSlotAvailable):
    """403 "untrusted": the scheduler never gives this caller a warm slot (exit 7)."""


@dataclass(frozen=True)
class SchedulerOptions:
    urls: tuple[str, ...]
    token: str
    ca_file: str | None = None  # None: the system's CA bundle
    token_file: str | None = None  # re-read for every request: kubelet rotates projected tokens
    token_source: Callable[[], str] | None = None  # e.g. GitHub's OIDC token, re-minted before it expires
    poll_seconds: float = POLL_SECONDS
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS
    read_timeout: float = READ_TIMEOUT_SECONDS
    rounds: int = ROUNDS
    backoff_seconds: float = BACKOFF_SECONDS


def parse_scheduler_urls(text: str) -> tuple[str, ...]:
    """'https://a:8443,https://b:8443' -> both, without trailing slashes; InputError if not https."""
    urls = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    if not urls:
        raise InputError("--scheduler needs at least one URL, e.g. https://warmbuild-scheduler:8443")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise InputError(f"--scheduler URL {url!r} must be https://HOST[:PORT]")
    return urls


def scheduler_token_file(token: str | None, token_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The token file to read, unless a token is given outright; the pod's SA token in a pod."""
    if token or environ.get("WARMBUILD_SCHEDULER_TOKEN"):
        return None
    token_file = token_file or environ.get("WARMBUILD_SCHEDULER_TOKEN_FILE")
    if not token_file and PROJECTED_TOKEN.is_file():
        token_file = str(PROJECTED_TOKEN)
    if not token_file and environ.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.is_file():
        token_file = str(IN_CLUSTER_TOKEN)
    return token_file


def oidc_token_source(
    token: str | None, token_file: str | None, environ: Mapping[str, str]
) -> Callable[[], str] | None:
    """GitHub's OIDC token for WARMBUILD_SCHEDULER_OIDC_AUDIENCE, unless a token or file is given."""
    audience = (environ.get("WARMBUILD_SCHEDULER_OIDC_AUDIENCE") or "").strip()
    if not audience or token or token_file or environ.get("WARMBUILD_SCHEDULER_TOKEN"):
        return None
    if environ.get("WARMBUILD_SCHEDULER_TOKEN_FILE"):
        return None
    return GitHubOidcTokenSource.from_env(environ, audience).token


def scheduler_token(token: str | None, token_file: str | None, environ: Mapping[str, str]) -> str:
    """The bearer token: --scheduler-token / WARMBUILD_SCHEDULER_TOKEN, a token file, the job's OIDC
    token, or the pod's SA token."""
    token = token or environ.get("WARMBUILD_SCHEDULER_TOKEN")
    if token:
        return token.strip()
    token_file = scheduler_token_file(None, token_file, environ)
    if not token_file:
        raise InputError(
            "no token for the scheduler: pass --scheduler-token-file FILE, or set WARMBUILD_SCHEDULER_TOKEN "
            "(a GitLab id_tokens variable, or a Kubernetes service account token), or "
            "WARMBUILD_SCHEDULER_OIDC_AUDIENCE on GitHub Actions, or run in a pod with a service account"
        )
    try:
        text = Path(token_file).read_text().strip()
    except OSError as exc:
        raise InputError(f"cannot read the scheduler token file {token_file}: {exc.strerror or exc}") from None
    if not text:
        raise InputError(f"the scheduler token file {token_file} is empty")
    return text


def scheduler_options(
    urls: str, token: str | None, token_file: str | None, ca_file: str | None, environ: Mapping[str, str] | None = None
) -> SchedulerOptions:
    environ = os.environ if environ is None else environ
    if ca_file and not Path(ca_file).is_file():
        raise InputError(f"--scheduler-ca {ca_file} does not exist")
    parsed = parse_scheduler_urls(urls)
    source = oidc_token_source(token, token_file, environ)
    if source is not None:
        return SchedulerOptions(urls=parsed, token=source(), ca_file=ca_file, token_source=source)
    return SchedulerOptions(
        urls=parsed,
        token=scheduler_token(token, token_file, environ),
        ca_file=ca_file,
        token_file=scheduler_token_file(token, token_file, environ),
    )


def gateway_route(gateway: object, key: ClientKey) -> GatewayRoute | None:
    """The grant's route through the gateway (None without one): the CA and certificate written next
    to the key (certificate last and atomically, so a connection never reads half of one)."""
    if gateway is None:
        return None
    try:
        address, server_name = str(gateway["address"]), str(gateway["server_name"])
        ca_pem, cert_pem = str(gateway["ca"]), str(gateway["certificate"])
    except (KeyError, TypeError) as exc:
        raise SchedulerError(f"the scheduler's gateway answer is incomplete ({type(exc).__name__}: {exc})") from None
    directory = key.key_path.parent
    ca, cert = directory / "gateway-ca.crt", directory / "grant.crt"
    for path, text in ((ca, ca_pem), (cert, cert_pem)):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    return GatewayRoute(address=f"tcp://{address}", server_name=server_name, ca=ca, cert=cert, key=key.key_path)


ROUTE_PROBE_SECONDS = 0.25
ROUTE_WAIT_SECONDS = 15.0


def wait_routed(route: GatewayRoute, budget: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """Until the gateway answers `route.server_name` with its own certificate for it (its map routes
    the name; before that it passes the connection to the scheduler, whose certificate does not
    match), within `budget` (at most ROUTE_WAIT_SECONDS); BuilderStartFailed after it."""
    host, _, port = route.address.removeprefix("tcp://").rpartition(":")
    context = ssl.create_default_context(cafile=str(route.ca))
    context.load_cert_chain(str(route.cert), str(route.key))
    context.set_alpn_protocols(["h2"])
    deadline = time.monotonic() + min(max(budget, 1.0), ROUTE_WAIT_SECONDS)
    last = ""
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_SECONDS) as raw:
                with context.wrap_socket(raw, server_hostname=route.server_name):
                    return
        except (OSError, ValueError) as exc:
            last = _short(exc)
        if time.monotonic() >= deadline:
            raise BuilderStartFailed(f"the gateway {route.address} does not route {route.server_name} yet ({last})")
        sleep(ROUTE_PROBE_SECONDS)


def grant_from_answer(answer: dict, waited_seconds: float) -> Grant:
    """A `Grant` from a "granted" answer; SchedulerError if fields are missing."""
    try:
        lease, builder = answer["lease"], answer["builder"]
        return Grant(
            lease=SlotLease(
                namespace=str(lease["namespace"]),
                name=str(lease["name"]),
                builder=str(builder["name"]),
                holder=str(lease["holder"]),
                transitions=int(lease["transitions"]),
                resource_version=str(lease.get("resource_version", "")),
                duration_seconds=int(lease["duration_seconds"]),
                acquired_at=datetime.fromisoformat(str(lease["acquired_at"])),
                release_token=str(lease["release_token"]),
            ),
            builder=Builder(
                name=str(builder["name"]),
                uid=str(builder.get("uid", "")),
                address=str(builder["address"]),
                slots=int(builder.get("slots", 0)),
                server_name=str(builder["server_name"]) if builder.get("server_name") else None,
            ),
            affine=bool(answer["affine"]),
            affine_builder=str(answer.get("affine_builder", "")),
            path=str(answer["path"]),
            waited_seconds=round(waited_seconds, 3),
            reason=str(answer.get("reason", "")),
            run_tls=_run_tls(answer.get("run_tls")),
            untrusted=answer.get("untrusted") is True,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SchedulerError(
            f"the scheduler's grant is incomplete ({type(exc).__name__}: {exc}); is it a warmbuild scheduler?"
        ) from None


def _run_tls(document) -> RunTls | None:
    if not document:
        return None
    return RunTls(
        server_name=str(document["server_name"]),
        ca_pem=str(document["ca"]).encode(),
        cert_pem=str(document["cert"]).encode(),
        key_pem=str(document["key"]).encode(),
    )


class SchedulerClient:
    """Acquire, renew and release slots through the scheduler service (a `SlotBroker`)."""

    def __init__(
        self,
        options: SchedulerOptions,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.options = options
        self.session = session or requests.Session()
        self.sleep = sleep
        self.clock = clock
        self._current = random.randrange(len(options.urls))  # spread clients over replicas
        self._held: dict[str, tuple[str, float]] = {}  # lease name -> (pool, when acquired by self.clock)
        self._keys: dict[str, tuple[ClientKey, Path]] = {}  # lease name -> the runner's key, its directory
        self._answered = False  # has any replica answered this client yet (any HTTP status)

    # -- SlotBroker -------------------------------------------------------------------------------

    def acquire(self, request: PlacementRequest, log: Callable[[str], None] = lambda _line: None) -> Grant:
        started = self.clock()
        give_up = (
            started + request.max_wait_seconds + 2 * self.options.poll_seconds + 60
        )  # a server that only says "wait"
        key, directory = self._new_client_key()
        try:
            grant = self._poll(request, log, started, give_up, key)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._keys[grant.lease.name] = (key, directory)
        return grant

    def _poll(self, request: PlacementRequest, log, started: float, give_up: float, key: ClientKey) -> Grant:
        announced = False
        busy_said = outage_said = False
        while True:
            waited = self.clock() - started
            body = {
                "workload_key": request.key.value,
                "max_wait_seconds": request.max_wait_seconds,
                "waited_seconds": round(waited, 3),
                "poll_seconds": self.options.poll_seconds,
                "lease_seconds": request.lease_seconds,
                "run_url": request.holder.run_url,
                "holder_hint": request.holder.identity,
                # The scheduler waits then spills, or fails at once; auto/ephemeral need a Kubernetes client.
                "fallback": "fail" if request.fallback == "fail" else "wait",
                "csr": key.csr_pem,
                "key_path": request.key.path,
                "untrusted": request.untrusted,
            }
            if request.avoid:  # sent only on a retry, so a scheduler older than the field serves every first try
                body["avoid_builders"] = list(request.avoid)
            try:
                answer = self._call(
                    "POST",
                    f"/v1/pools/{quote(request.pool, safe='')}/acquire",
                    body,
                    read_timeout=self.options.poll_seconds + self.options.read_timeout,
                )
            except SchedulerBusy as busy:
                if self.clock() > give_up:
                    raise
                if not busy_said:
                    log(f"{busy.message}; waiting")
                    busy_said = True
                self.sleep(max(0.5, min(busy.retry_after, 30.0)))
                continue
            except SchedulerUnavailable as down:
                # Never answered: a wrong URL or CA, said within seconds. Answered before: every replica
                # is restarting at once (a rollout, the API server behind them): wait within --max-wait.
                if not self._answered or self.clock() - started >= request.max_wait_seconds:
                    raise
                if not outage_said:
                    log(
                        f"{down.message}; asking again every {OUTAGE_RETRY_SECONDS:g}s for up to "
                        f"{request.max_wait_seconds - (self.clock() - started):.0f}s (--max-wait)"
                    )
                    outage_said = True
                self.sleep(OUTAGE_RETRY_SECONDS)
                continue
            decision = answer.get("decision")
            if decision == "granted":
                grant = grant_from_answer(answer, self.clock() - started)
                route = gateway_route(answer.get("gateway"), key)
                if route is not None:
                    grant = replace(grant, gateway=route)
                self._held[grant.lease.name] = (request.pool, self.clock())
                return grant
            if decision == "fallback":
                raise NoSlotAvailable(f"the scheduler found no slot: {answer.get('reason') or 'no reason given'}")
            if decision != "wait":
                raise SchedulerError(
                    f"the scheduler answered decision {decision!r}, which this warmbuild does not "
                    f"know (it knows {', '.join(KNOWN_DECISIONS)}): upgrade warmbuild"
                )
            if not announced:
                log(
                    f"{answer.get('reason') or 'no slot yet'}; waiting through the scheduler "
                    f"(up to {request.max_wait_seconds:.0f}s for the affine builder)"
                )
                announced = True
            if self.clock() > give_up:
                raise NoSlotAvailable(
                    f"the scheduler kept answering 'wait' for {self.clock() - started:.0f}s, "
                    f"past --max-wait {request.max_wait_seconds:.0f}s"
                )

    def start_ephemeral(self, request: PlacementRequest, grant: Grant, settings, on_created) -> Grant:
        """Nothing to start: the scheduler made the pod with the grant (its release token, not the
        pod, is what `warmbuild release` needs, so `on_created` is not called)."""
        if grant.lease is None or grant.builder is None:
            raise SchedulerError("the scheduler's ephemeral grant names no builder; is it a warmbuild scheduler?")
        return grant

    def wait_ready(self, grant: Grant, settings) -> Grant:
        """Ask the scheduler until the ephemeral builder is Ready (BuilderStartFailed, exit 9, if it
        fails or is not Ready within the settings' startup timeout)."""
        deadline = self.clock() + settings.startup_timeout_seconds
        lease = grant.lease
        while True:
            left = deadline - self.clock()
            if left <= 0:
                raise BuilderStartFailed(
                    f"ephemeral builder {grant.builder.name} was not ready after "
                    f"{settings.startup_timeout_seconds:.0f}s (the scheduler started it)"
                )
            wait = min(self.options.poll_seconds, left)
            answer = self._call(
                "POST",
                f"/v1/slots/{quote(lease.name, safe='')}/ephemeral",
                {"holder": lease.holder, "release_token": lease.release_token, "wait_seconds": round(wait, 3)},
                read_timeout=wait + self.options.read_timeout,
            )
            if answer.get("failed"):
                raise BuilderStartFailed(f"ephemeral builder {grant.builder.name}: {answer['failed']}")
            if answer.get("ready") and answer.get("address"):
                if grant.gateway is not None:
                    wait_routed(grant.gateway, deadline - self.clock(), self.sleep)
                return replace(grant, builder=replace(grant.builder, address=str(answer["address"])))

    def record(self, request: PlacementRequest, grant: Grant, result) -> None:
        """Nothing: this runner has no access to the pool's history; the scheduler's placement reads it."""

    def mark_unhealthy(self, request: PlacementRequest, grant: Grant, reason: str, log=lambda _line: None) -> bool:
        """Nothing: this runner has no Lease rights, and the scheduler takes no caller's word about a
        builder. A retry through the scheduler still avoids the builder (`avoid_builders`)."""
        return False

    def clear_unhealthy(self, request: PlacementRequest, grant: Grant) -> None:
        """Nothing (see `mark_unhealthy`)."""

    def renew(self, lease: SlotLease, timeout: float | None = None) -> SlotLease:
        """Extend the hold, within `timeout` seconds if given; LeaseLost if the scheduler says another
        holder has the slot (fencing), SchedulerUnavailable if no replica answered in time."""
        body = {"holder": lease.holder, "release_token": lease.release_token, "transitions": lease.transitions}
        held_key = self._keys.get(lease.name)
        if held_key is not None:
            body["csr"] = held_key[0].csr_pem
        answer = self._call(
            "POST", f"/v1/slots/{quote(lease.name, safe='')}/renew", body, lost_on_409=True, budget=timeout
        )
        if held_key is not None and isinstance(answer.get("gateway"), dict):
            gateway_route(answer["gateway"], held_key[0])  # the fresh certificate over the old one
        return replace(lease, resource_version=str(answer.get("resource_version", lease.resource_version)))

    def keep(
        self, grant: Grant, on_lost: Callable[[str], None], log: Callable[[str], None] = lambda _line: None
    ) -> SchedulerKeeper:
        return SchedulerKeeper(self, grant.lease, on_lost, clock=self.clock, log=log).start()

    def release(self, grant: Grant) -> bool:
        return self.release_lease(grant.lease.name, grant.lease.holder, grant.lease.release_token, path=grant.path)

    # -- also for `warmbuild release` and `pool status` -------------------------------------------

    def release_lease(self, name: str, holder: str, release_token: str, path: str | None = None) -> bool:
        if not release_token:
            raise SchedulerError(
                f"no release token for slot {name} (the state file has none): it will expire on its own "
                "when its lease runs out"
            )
        body: dict = {"holder": holder, "release_token": release_token}
        pool, acquired = self._held.pop(name, ("", None))
        _key, directory = self._keys.pop(name, (None, None))
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)  # the key and certificate end with the grant
        if pool and acquired is not None and path:
            body.update(pool=pool, path=path, held_seconds=round(max(0.0, self.clock() - acquired), 3))
        answer = self._call("POST", f"/v1/slots/{quote(name, safe='')}/release", body)
        return bool(answer.get("released"))

    def pool_status(self, pool: str) -> dict:
        return self._call("GET", f"/v1/pools/{quote(pool, safe='')}/status")

    def close(self) -> None:
        """Close kept-alive connections (a long-lived process with many clients should)."""
        self.session.close()

    def _new_client_key(self) -> tuple[ClientKey, Path]:
        from ..gateway.certs import make_client_key

        directory = Path(tempfile.mkdtemp(prefix="grant-", dir=private_state_dir(os.environ)))
        try:
            return make_client_key(directory), directory
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    # -- HTTP ---------------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        read_timeout: float | None = None,
        lost_on_409: bool = False,
        budget: float | None = None,
    ) -> dict:
        """The answer of the first replica that gives one. With `budget`, every attempt, timeout and
        backoff ends within that many seconds (real time: a hung request is what it bounds)."""
        urls = self.options.urls
        problems: list[str] = []
        deadline = None if budget is None else time.monotonic() + budget
        read_timeout = read_timeout or self.options.read_timeout
        for round_index in range(self.options.rounds):
            if round_index:
                pause = self.options.backoff_seconds * (2 ** (round_index - 1))
                if deadline is not None and time.monotonic() + pause >= deadline:
                    break
                self.sleep(pause)
            for _ in range(len(urls)):
                url = urls[self._current]
                connect_timeout, attempt_timeout = self.options.connect_timeout, read_timeout
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    # requests bounds connect and each read, not their sum: half the time left for each
                    connect_timeout, attempt_timeout = min(connect_timeout, left / 2), min(attempt_timeout, left / 2)
                problem = None
                try:
                    response = self.session.request(
                        method,
                        url + path,
                        json=body,
                        headers={"Authorization": f"Bearer {self._token()}", "Accept": "application/json"},
                        timeout=(connect_timeout, attempt_timeout),
                        verify=self.options.ca_file or True,
                    )
                except requests.exceptions.SSLError as exc:
                    if "certificate" not in str(exc).lower():
                        problem = f"TLS with {url} broke off: {_short(exc)}"  # e.g. the replica died mid-handshake
                    else:
                        raise SchedulerError(
                            f"cannot verify the scheduler's certificate at {url} ({_short(exc)}): "
                            "pass the CA that signed it with --scheduler-ca"
                        ) from None
                except requests.exceptions.Timeout:
                    problem = f"{url} did not answer within {attempt_timeout:.3g}s"
                except requests.exceptions.RequestException as exc:
                    problem = f"cannot connect to {url}: {_short(exc)}"
                else:
                    document, problem = _decode(response, url)
                    # A JSON answer, even a 503 (the API server behind it restarting), is a warmbuild
                    # scheduler at a right URL with a verified certificate.
                    self._answered = self._answered or problem is None or _json_error(response)
                    if problem is None:
                        return self._check_status(
                            response.status_code, document, url, lost_on_409, response.headers.get("Retry-After")
                        )
                problems.append(problem)
                self._current = (self._current + 1) % len(urls)
        within = f" within {budget:.3g}s" if budget is not None else ""
        raise SchedulerUnavailable(
            f"no scheduler replica answered{within} ({len(urls)} URL{'s' if len(urls) > 1 else ''}, "
            f"{len(problems)} attempts); last: {problems[-1] if problems else 'no time left to ask'}"
        )

    def _token(self) -> str:
        if self.options.token_source is not None:
            return self.options.token_source()
        if self.options.token_file:
            try:
                return Path(self.options.token_file).read_text().strip() or self.options.token
            except OSError:
                pass  # rotated away for a moment: the token read at start may still be valid
        return self.options.token

    @staticmethod
    def _check_status(status: int, document: dict, url: str, lost_on_409: bool, retry_after: str | None = None) -> dict:
        if status < 400:
            return document
        reason = document.get("error") or "no reason given"
        if status == 409 and lost_on_409:
            raise LeaseLost(reason)
        if status == 429:
            seconds = float(retry_after) if (retry_after or "").isdigit() else 2.0
            raise SchedulerBusy(f"the scheduler at {url} says this identity is at its limit (429): {reason}", seconds)
        if status == 403 and document.get("code") == "untrusted":
            raise UntrustedRefused(f"the scheduler refused a warm slot: {reason}")
        if status == 401:
            raise SchedulerError(f"the scheduler at {url} did not accept the token (401): {reason}")
        if status == 403:
            raise SchedulerError(f"the scheduler at {url} refused (403): {reason}")
        raise SchedulerError(f"the scheduler at {url} answered {status}: {reason}")


def _decode(response: requests.Response, url: str) -> tuple[dict, str | None]:
    """(JSON object, None), or ({}, why this answer is worth retrying on another replica)."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code >= 500:
        reason = document.get("error") if isinstance(document, dict) else None
        return {}, f"{url} answered {response.status_code}: {reason or _short(response.text) or response.reason}"
    if not isinstance(document, dict):
        return {}, f"{url} answered {response.status_code} with malformed JSON: {_short(response.text) or 'empty body'}"
    return document, None


def _json_error(response: requests.Response) -> bool:
    try:
        document = response.json()
    except ValueError:
        return False
    return isinstance(document, dict) and "error" in document


def _short(value, limit: int = 160) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SchedulerKeeper(SlotKeeper):
    """A SlotKeeper that renews through the scheduler: an unreachable scheduler is an outage, retried
    through; a 409 (another holder has the slot) is LeaseLost and aborts the build."""

    def __init__(
        self,
        client: SchedulerClient,
        held: SlotLease,
        on_lost: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = lambda _line: None,
        wait: Callable[[float], bool] | None = None,
    ):
        super().__init__(client.renew, held, on_lost, clock, log=log, wait=wait)
