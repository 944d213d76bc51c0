"""The gateway's pure parts and the scheduler's grant certificates: names, CSR signing, the map the
sync sidecar writes, and the acquire/renew routes with a CSR (stub service, plain HTTP on loopback).
The real gateway (HAProxy) on the testbed: tests/integration/test_gateway.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from warmbuild.gateway.certs import MARGIN_SECONDS, BadCsr, GrantSigner, certificate_name, make_client_key  # noqa: E402
from warmbuild.gateway.names import check_domain, gateway_server_name  # noqa: E402
from warmbuild.gateway.sync import map_entries, render_map, write_map  # noqa: E402
from warmbuild.kube.views import PodView  # noqa: E402
from warmbuild.pool.membership import Builder  # noqa: E402


def make_ca(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "grant CA")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "ca.crt", tmp_path / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_the_runners_key_stays_in_its_private_directory_and_the_csr_carries_only_the_public_key(tmp_path):
    key = make_client_key(tmp_path)
    assert key.key_path.parent == tmp_path and key.key_path.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in key.csr_pem and "CERTIFICATE REQUEST" in key.csr_pem


def test_a_grant_certificate_names_the_builder_alone_for_clients_and_lives_the_lease_plus_a_margin(tmp_path):
    signer = GrantSigner.from_files(*map(str, make_ca(tmp_path)))
    key = make_client_key(tmp_path)
    now = datetime.now(timezone.utc)
    signed = signer.sign(key.csr_pem, "warmbuild-builder-1", 15, now=now)
    cert = x509.load_pem_x509_certificate(signed.cert_pem.encode())
    assert certificate_name(signed.cert_pem.encode()) == "warmbuild-builder-1"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.not_valid_after_utc - now <= timedelta(seconds=15)
    assert signed.not_after == now + timedelta(seconds=15)
    assert "warmbuild-runner" not in cert.subject.rfc4514_string()  # the CSR's subject is not taken


@pytest.mark.parametrize(
    "csr, why",
    [
        ("not a csr", "not a PEM"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a PEM"),
        ("x" * 9000, "longer than"),
    ],
)
def test_a_csr_that_cannot_be_signed_is_refused_with_one_reason(tmp_path, csr, why):
    signer = GrantSigner.from_files(*map(str, make_ca(tmp_path)))
    with pytest.raises(BadCsr, match=why):
        signer.sign(csr, "b", 15)


def test_gateway_names_are_one_label_under_the_domain():
    assert gateway_server_name("warmbuild-builder-0") == "warmbuild-builder-0.builders.warmbuild.internal"
    assert gateway_server_name("b-0", "Gw.Example.COM.") == "b-0.gw.example.com"
    for bad in ("a.b", "UPPER", "", "-x"):
        with pytest.raises(ValueError):
            gateway_server_name(bad)
    with pytest.raises(ValueError):
        check_domain("bad_domain")


def test_the_map_routes_usable_builders_with_their_own_certificate_names(tmp_path):
    builders = [
        Builder("b-0", "u0", "tcp://10.0.0.5:1234", 2, "b-0.b.ns.svc"),
        Builder("b-1", "u1", "tcp://10.0.0.6:1234", 2, None),  # no stable name: no TLS identity, not routed
    ]
    ready = PodView("warmbuild-p-ephemeral-ab12", "u2", "10.0.0.7", 1234, 1, True, False, False)
    starting = PodView("warmbuild-p-ephemeral-cd34", "u3", None, 1234, 1, False, False, False)
    entries = map_entries(builders, [ready, starting], "builders.warmbuild.internal")
    assert entries == {
        "b-0.builders.warmbuild.internal": "10.0.0.5|1234|b-0.b.ns.svc",
        "warmbuild-p-ephemeral-ab12.builders.warmbuild.internal": "10.0.0.7|1234|warmbuild-p-ephemeral-ab12",
    }
    path = tmp_path / "builders.map"
    write_map(path, entries)
    assert path.read_text() == render_map(entries)
    assert path.read_text().splitlines()[0] == "b-0.builders.warmbuild.internal 10.0.0.5|1234|b-0.b.ns.svc"


# -- the routes -------------------------------------------------------------------------------------

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from warmbuild.pool.leases import SlotLease  # noqa: E402
from warmbuild.pool.placement import Grant  # noqa: E402
from warmbuild.scheduler.app import AppParts, create_app  # noqa: E402
from warmbuild.scheduler.auth import Caller, parse_access_config  # noqa: E402
from warmbuild.scheduler.gateway import GatewayIssuer, GatewayOptions  # noqa: E402
from warmbuild.scheduler.metrics import SchedulerMetrics  # noqa: E402
from warmbuild.scheduler.service import AcquireAnswer  # noqa: E402


class Reviewer:
    def review(self, token: str) -> Caller:
        return Caller(token)


class Service:
    ephemeral = object()  # this scheduler starts ephemeral builders for untrusted callers

    def __init__(self):
        self.acquires = 0
        self.ephemeral_trust = "not called"

    def start_ephemeral(self, who, ask, gateway=None):
        from warmbuild.pool.run_certs import make_run_certificates

        self.ephemeral_trust = gateway
        now = datetime.now(timezone.utc)
        name = "warmbuild-default-ephemeral-0123abcd"
        made = make_run_certificates(name, 600, gateway=gateway)
        lease = SlotLease("ns", name, name, "h/1@ci", 1, "7", ask.lease_seconds, now, "token")
        builder = Builder(name, "u9", "", 1, name)
        grant = Grant("ephemeral", lease, builder, False, None, 0.0, "untrusted")
        return AcquireAnswer("granted", 0.0, "untrusted", replace(grant, run_tls=None if gateway else made.client))

    def acquire(self, who, ask):
        self.acquires += 1
        now = datetime.now(timezone.utc)
        lease = SlotLease("ns", "b-1-slot-0", "b-1", "h/1@ci", 1, "7", ask.lease_seconds, now, "token")
        builder = Builder("b-1", "u1", "tcp://10.0.0.6:1234", 2, "b-1.b.ns.svc")
        return AcquireAnswer("granted", 0.0, "affine", Grant("warm", lease, builder, True, "b-1", 0.0, "affine"))

    def renew(self, who, lease, holder, transitions, release_token):
        return SlotLease("ns", lease, "b-1", holder, transitions, "8", 15, datetime.now(timezone.utc))


@pytest.fixture
def gateway_app(tmp_path):
    ca_cert, ca_key = make_ca(tmp_path)
    gateway_ca = tmp_path / "gateway-ca.crt"
    gateway_ca.write_text("GATEWAY CA\n")
    issuer = GatewayIssuer.from_options(
        GatewayOptions("gw.example.com:8443", str(gateway_ca), str(ca_cert), str(ca_key), "builders.example.com")
    )
    access = parse_access_config("grants:\n  - {pools: [default], users: [ci]}\n", "auth.yaml")
    service = Service()
    metrics = SchedulerMetrics(access.pools, lambda pool: None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(AppParts(service, Reviewer(), access, metrics, gateway=issuer))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", service, tmp_path
    server.should_exit = True
    thread.join(5)


def post(base, path, body):
    return requests.post(base + path, json=body, headers={"Authorization": "Bearer ci"}, timeout=10)


def test_a_grant_with_a_csr_comes_with_a_certificate_for_the_granted_builder_and_the_gateway(gateway_app):
    base, _service, tmp_path = gateway_app
    key = make_client_key(tmp_path)
    body = {"workload_key": "k", "max_wait_seconds": 0, "lease_seconds": 20, "csr": key.csr_pem}
    answer = post(base, "/v1/pools/default/acquire", body).json()
    gateway = answer["gateway"]
    assert gateway["address"] == "gw.example.com:8443" and gateway["ca"] == "GATEWAY CA\n"
    assert gateway["server_name"] == "b-1.builders.example.com"
    cert = x509.load_pem_x509_certificate(gateway["certificate"].encode())
    assert certificate_name(gateway["certificate"].encode()) == "b-1"
    assert (
        cert.public_key().public_numbers()
        == serialization.load_pem_private_key(key.key_path.read_bytes(), None).public_key().public_numbers()
    )
    lifetime = cert.not_valid_after_utc - datetime.now(timezone.utc)
    assert timedelta(seconds=20) < lifetime <= timedelta(seconds=20 + MARGIN_SECONDS)
    renewed = post(
        base,
        "/v1/slots/b-1-slot-0/renew",
        {"holder": "h/1@ci", "release_token": "t", "transitions": 1, "csr": key.csr_pem},
    )
    assert certificate_name(renewed.json()["gateway"]["certificate"].encode()) == "b-1"


def test_a_bad_csr_is_refused_before_any_slot_is_taken(gateway_app):
    base, service, _ = gateway_app
    answer = post(base, "/v1/pools/default/acquire", {"workload_key": "k", "max_wait_seconds": 0, "csr": "nope"})
    assert answer.status_code == 400 and answer.json()["error"].startswith("invalid request: csr:")
    assert service.acquires == 0


def test_an_untrusted_callers_ephemeral_builder_is_reached_through_the_gateway_with_no_key_sent(gateway_app):
    base, service, tmp_path = gateway_app
    key = make_client_key(tmp_path)
    body = {"workload_key": "k", "max_wait_seconds": 0, "lease_seconds": 20, "csr": key.csr_pem, "untrusted": True}
    answer = post(base, "/v1/pools/default/acquire", body).json()
    assert answer["decision"] == "granted" and answer["path"] == "ephemeral" and answer["untrusted"] is True
    assert service.ephemeral_trust is not None and service.acquires == 0  # started with the gateway's trust
    assert "run_tls" not in answer and "PRIVATE KEY" not in json.dumps(answer)
    gateway = answer["gateway"]
    assert gateway["server_name"] == "warmbuild-default-ephemeral-0123abcd.builders.example.com"
    assert certificate_name(gateway["certificate"].encode()) == "warmbuild-default-ephemeral-0123abcd"
    # Without a CSR (no runner key to certify), the run's own client pair, as before a gateway.
    del body["csr"]
    answer = post(base, "/v1/pools/default/acquire", body).json()
    assert service.ephemeral_trust is None and "gateway" not in answer and "PRIVATE KEY" in answer["run_tls"]["key"]


def test_without_a_csr_a_grant_has_no_gateway_part(gateway_app):
    base, _service, _ = gateway_app
    answer = post(base, "/v1/pools/default/acquire", {"workload_key": "k", "max_wait_seconds": 0}).json()
    assert answer["decision"] == "granted" and "gateway" not in answer


# -- the client ------------------------------------------------------------------------------------

responses = pytest.importorskip("responses")

from warmbuild.pipeline import builder_endpoint  # noqa: E402
from warmbuild.pool.leases import HolderInfo  # noqa: E402
from warmbuild.pool.placement import PlacementRequest  # noqa: E402
from warmbuild.pool.workload import explicit_key  # noqa: E402
from warmbuild.scheduler.client import SchedulerClient, SchedulerOptions  # noqa: E402

URL = "https://gw.example.com:8443"


@responses.activate
def test_a_runner_builds_through_the_gateway_with_its_own_key_and_the_granted_certificate(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    signer = GrantSigner.from_files(*map(str, make_ca(tmp_path)))
    sent: list[dict] = []

    def grant(request):
        import json

        body = json.loads(request.body)
        sent.append(body)
        certificate = signer.sign(body["csr"], "builders-1", 15).cert_pem
        return (
            200,
            {},
            json.dumps(
                {
                    "decision": "granted",
                    "waited_seconds": 0.0,
                    "reason": "affine",
                    "lease": {
                        "name": "builders-1-slot-0",
                        "namespace": "warmbuild",
                        "holder": "h/1@ci",
                        "transitions": 1,
                        "duration_seconds": 15,
                        "acquired_at": "2026-01-02T03:04:05+00:00",
                        "release_token": "t",
                    },
                    "builder": {"name": "builders-1", "address": "tcp://10.0.0.7:1234", "server_name": "b.svc"},
                    "path": "warm",
                    "affine": True,
                    "gateway": {
                        "address": "gw.example.com:8443",
                        "server_name": "builders-1.builders.warmbuild.internal",
                        "ca": "GATEWAY CA\n",
                        "certificate": certificate,
                    },
                }
            ),
        )

    responses.add_callback(responses.POST, f"{URL}/v1/pools/default/acquire", callback=grant)
    responses.post(f"{URL}/v1/slots/builders-1-slot-0/release", json={"released": True})
    client = SchedulerClient(SchedulerOptions(urls=(URL,), token="tok"))
    placement = PlacementRequest("warmbuild", "default", explicit_key("k"), HolderInfo("h"), 0, 15)
    granted = client.acquire(placement)
    route = granted.gateway
    assert route.address == "tcp://gw.example.com:8443" and route.server_name.startswith("builders-1.")
    assert route.key.parent.parent == tmp_path / "warmbuild" and route.key.parent.stat().st_mode & 0o777 == 0o700
    assert certificate_name(route.cert.read_bytes()) == "builders-1" and route.ca.read_text() == "GATEWAY CA\n"
    assert "PRIVATE" not in sent[0]["csr"]
    with builder_endpoint(granted, None) as endpoint:  # no TLS flags given: the gateway's files all the same
        assert endpoint.address == "tcp://gw.example.com:8443"
        assert endpoint.tls.server_name == "builders-1.builders.warmbuild.internal"
        assert endpoint.tls.key == route.key and endpoint.tls.cert == route.cert
    assert client.release(granted) is True
    assert not route.key.parent.exists()  # the key and certificate end with the grant


def test_an_ephemeral_builder_behind_the_gateway_accepts_the_gateway_and_the_gateway_can_verify_it(tmp_path):
    from warmbuild.pool.run_certs import GatewayTrust, make_run_certificates

    (tmp_path / "grant").mkdir()
    (tmp_path / "pool").mkdir()
    grant_cert, grant_key = make_ca(tmp_path / "grant")
    pool_ca = make_ca(tmp_path / "pool")[0].read_bytes()
    trust = GatewayTrust(pool_ca, grant_cert.read_bytes(), grant_key.read_bytes())
    made = make_run_certificates("warmbuild-p-ephemeral-ab12", 600, gateway=trust)
    server = x509.load_pem_x509_certificate(made.server_cert_pem)
    grant = x509.load_pem_x509_certificate(grant_cert.read_bytes())
    server.verify_directly_issued_by(grant)  # the gateway's upstream bundle holds the grant CA
    assert pool_ca in made.ca_pem and made.ca_pem.count(b"BEGIN CERTIFICATE") == 2  # run CA + the pool CA
    assert made.client.ca_pem == grant_cert.read_bytes()
    assert "PRIVATE" not in repr(trust)
    plain = make_run_certificates("warmbuild-p-ephemeral-cd34", 600)
    assert plain.ca_pem == plain.client.ca_pem and plain.ca_pem.count(b"BEGIN CERTIFICATE") == 1


def test_the_map_replaces_the_running_one_atomically_through_the_admin_socket(tmp_path):
    """A stand-in for HAProxy's admin socket: one command line per connection, as HAProxy reads it."""
    import socket as socketlib

    from warmbuild.gateway.sync import push_map

    path = str(tmp_path / "admin.sock")
    server = socketlib.socket(socketlib.AF_UNIX)
    server.bind(path)
    server.listen()
    lines: list[str] = []

    def serve():
        for answer in ("New version created: 4\n", "\n"):
            connection, _ = server.accept()
            with connection:
                lines.append(connection.recv(65536).decode().strip())
                connection.sendall(answer.encode())

    thread = threading.Thread(target=serve)
    thread.start()
    push_map(path, tmp_path / "builders.map", {"b-0.d.internal": "10.0.0.5|1234|b-0.b.ns.svc"})
    thread.join(5)
    server.close()
    map_file = tmp_path / "builders.map"
    assert lines[0] == f"prepare map {map_file}"
    assert lines[1] == f"add map @4 {map_file} b-0.d.internal 10.0.0.5|1234|b-0.b.ns.svc;commit map @4 {map_file}"


def test_the_scheduler_gives_its_ephemeral_builders_the_gateways_trust(gateway_app):
    """What the scheduler hands `make_run_certificates` for an ephemeral builder behind the gateway."""
    from warmbuild.pool.run_certs import make_run_certificates

    _base, _service, tmp_path = gateway_app
    ca_cert, ca_key = tmp_path / "ca.crt", tmp_path / "ca.key"
    issuer = GatewayIssuer.from_options(
        GatewayOptions("gw:8443", str(tmp_path / "gateway-ca.crt"), str(ca_cert), str(ca_key), "")
    )
    trust = issuer.run_trust()
    assert trust.server_ca_cert_pem == ca_cert.read_bytes() and trust.client_ca_pem == b"GATEWAY CA\n"
    made = make_run_certificates("warmbuild-p-ephemeral-ef56", 600, gateway=trust)
    x509.load_pem_x509_certificate(made.server_cert_pem).verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca_cert.read_bytes())
    )


def test_a_runner_waits_for_the_gateway_to_route_its_ephemeral_builder_then_says_why_it_gave_up(tmp_path):
    """Before the sync maps a Ready pod, the gateway passes its name to the scheduler (wrong certificate)."""
    from warmbuild.errors import BuilderStartFailed
    from warmbuild.pool.placement import GatewayRoute
    from warmbuild.scheduler.client import wait_routed

    ca_cert, ca_key = make_ca(tmp_path)
    key = make_client_key(tmp_path)
    cert = tmp_path / "grant.crt"
    cert.write_text(GrantSigner.from_files(str(ca_cert), str(ca_key)).sign(key.csr_pem, "b-1", 60).cert_pem)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there now
    route = GatewayRoute(f"tcp://127.0.0.1:{port}", "b-1.d.internal", ca_cert, cert, key.key_path)
    slept: list[float] = []
    started = time.monotonic()
    with pytest.raises(
        BuilderStartFailed, match=r"the gateway tcp://127\.0\.0\.1:\d+ does not route b-1\.d\.internal yet"
    ):
        wait_routed(route, 1.0, lambda seconds: (slept.append(seconds), time.sleep(0.05)))
    assert slept and time.monotonic() - started < 5
