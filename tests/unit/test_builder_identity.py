"""Builder identity: the TLS server name of a leased builder, the ephemeral builder's per-run
certificates (checked with a real TLS handshake), its pod and Secret, and the orphaned Secrets gc
removes. The same against real buildkitd and the API server: tests/integration/test_builder_tls.py.
"""

from __future__ import annotations

import base64
import socket
import ssl
import stat
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from warmbuild.config import PoolFlags, TlsFiles, check_pool_flags
from warmbuild.errors import BuilderUnreachable, InputError
from warmbuild.kube.views import pod_view
from warmbuild.pipeline import builder_endpoint
from warmbuild.pool.ephemeral import EphemeralSettings, ephemeral_pod_manifest, run_labels, tls_secret_manifest
from warmbuild.pool.gc import find_garbage
from warmbuild.pool.leases import HolderInfo
from warmbuild.pool.membership import Builder, builder_from
from warmbuild.pool.placement import Grant
from warmbuild.pool.run_certs import make_run_certificates

x509 = pytest.importorskip("cryptography.x509")


def statefulset_pod(**spec) -> dict:
    return {
        "metadata": {"name": "warmbuild-builder-1", "namespace": "ci-pool", "uid": "u1"},
        "spec": {
            "containers": [{"name": "buildkitd", "ports": [{"name": "buildkitd", "containerPort": 1234}]}],
            **spec,
        },
        "status": {"podIP": "10.0.0.7"},
    }


def test_a_builders_server_name_is_its_stable_dns_name_from_the_pod_spec():
    pod = statefulset_pod(hostname="warmbuild-builder-1", subdomain="warmbuild-builder")
    assert pod_view(pod).stable_dns_name == "warmbuild-builder-1.warmbuild-builder.ci-pool.svc"
    assert builder_from(pod_view(pod)).server_name == "warmbuild-builder-1.warmbuild-builder.ci-pool.svc"
    # A pod without hostname and subdomain (not under a headless Service) has no name to verify.
    assert pod_view(statefulset_pod(hostname="warmbuild-builder-1")).stable_dns_name is None
    assert builder_from(pod_view(statefulset_pod())).server_name is None


def grant(builder: Builder, **fields) -> Grant:
    return Grant(
        path="warm",
        lease=None,
        builder=builder,
        affine=True,
        affine_builder=None,
        waited_seconds=0,
        reason="",
        **fields,
    )


CLIENT_FILES = TlsFiles(ca=Path("/ci/ca.crt"), cert=Path("/ci/tls.crt"), key=Path("/ci/tls.key"))


def test_a_pool_build_with_tls_files_verifies_the_leased_builders_own_name_and_never_goes_plaintext():
    named = Builder("warmbuild-builder-1", "u1", "tcp://10.0.0.7:1234", 2, "warmbuild-builder-1.b.ns.svc")
    with builder_endpoint(grant(named), CLIENT_FILES) as endpoint:
        assert endpoint.address == "tcp://10.0.0.7:1234"
        assert endpoint.tls == replace(CLIENT_FILES, server_name="warmbuild-builder-1.b.ns.svc")
    unnamed = replace(named, server_name=None)
    with pytest.raises(BuilderUnreachable) as refused:
        with builder_endpoint(grant(unnamed), CLIENT_FILES):
            pytest.fail("a builder without a stable name was used")
    assert "not a TLS-capable pool builder" in refused.value.message and "\n" not in refused.value.message
    # Without TLS files: plaintext, as the pool opted out.
    with builder_endpoint(grant(unnamed), None) as endpoint:
        assert endpoint.tls is None


def test_tls_server_name_is_for_direct_builders_only():
    flags = PoolFlags(pool="default", tls=TlsFiles(server_name="warmbuild-builder.warmbuild.svc"))
    with pytest.raises(InputError) as refused:
        check_pool_flags(flags)
    assert "applies to --builder only" in refused.value.message


def tls_handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_name: str) -> str | None:
    """A real handshake over loopback; the client's verification error, or None."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[str] = []

    def serve():
        connection, _ = listener.accept()
        try:
            with server.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(b"x")
        return None
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message
    finally:
        thread.join(5)
        listener.close()


def write(directory: Path, name: str, data: bytes) -> str:
    (directory / name).write_bytes(data)
    return str(directory / name)


def contexts(tmp_path: Path, server_pair, ca_for_server_side: bytes, client) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(write(tmp_path, "s.crt", server_pair[0]), write(tmp_path, "s.key", server_pair[1]))
    server.load_verify_locations(cafile=write(tmp_path, "s-ca.crt", ca_for_server_side))
    server.verify_mode = ssl.CERT_REQUIRED
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=write(tmp_path, "c-ca.crt", client.ca_pem))
    context.load_cert_chain(write(tmp_path, "c.crt", client.cert_pem), write(tmp_path, "c.key", client.key_pem))
    return server, context


def test_run_certificates_serve_mtls_for_the_pod_name_only(tmp_path):
    run = make_run_certificates("warmbuild-default-ephemeral-0a1b2c3d", 3600)
    server, client = contexts(tmp_path, (run.server_cert_pem, run.server_key_pem), run.ca_pem, run.client)
    assert tls_handshake(server, client, "warmbuild-default-ephemeral-0a1b2c3d") is None
    # Another name, or another run's builder, does not pass the client's check.
    assert "mismatch" in tls_handshake(server, client, "warmbuild-default-ephemeral-ffffffff")
    other = make_run_certificates("warmbuild-default-ephemeral-0a1b2c3d", 3600)
    server, _ = contexts(tmp_path, (other.server_cert_pem, other.server_key_pem), other.ca_pem, other.client)
    # (Both runs' CAs carry the same subject: OpenSSL finds "the" issuer by name and its signature fails.)
    assert tls_handshake(server, client, run.server_name) == "certificate signature failure"


def test_run_certificates_usages_validity_and_no_ca_key_kept():
    now = datetime(2026, 5, 1, tzinfo=timezone.utc)
    run = make_run_certificates("warmbuild-p-ephemeral-0a1b2c3d", 4200, now=now)
    server = x509.load_pem_x509_certificate(run.server_cert_pem)
    client = x509.load_pem_x509_certificate(run.client.cert_pem)
    ca = x509.load_pem_x509_certificate(run.ca_pem)
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["warmbuild-p-ephemeral-0a1b2c3d"]
    usage = x509.oid.ExtendedKeyUsageOID
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage.SERVER_AUTH]
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage.CLIENT_AUTH]
    assert server.not_valid_after_utc == now + timedelta(seconds=4200)
    assert server.not_valid_before_utc < now
    # The CA's key is nowhere in what is returned; keys never appear in a repr.
    assert b"PRIVATE KEY" not in run.ca_pem
    assert "PRIVATE" not in repr(run) and "PRIVATE" not in repr(run.client)


def test_ephemeral_pod_serves_mtls_from_its_own_secret_only():
    name = "warmbuild-default-ephemeral-0a1b2c3d"
    pod = ephemeral_pod_manifest(EphemeralSettings(), "ns", "default", HolderInfo(identity="h"), name)
    assert pod["metadata"]["name"] == name and "generateName" not in pod["metadata"]
    (container,) = pod["spec"]["containers"]
    assert {
        "--tlscert=/etc/buildkit/tls/tls.crt",
        "--tlskey=/etc/buildkit/tls/tls.key",
        "--tlscacert=/etc/buildkit/tls/ca.crt",
    } <= set(container["args"])
    assert pod["spec"]["volumes"] == [{"name": "tls", "secret": {"secretName": f"{name}-tls", "defaultMode": 0o440}}]
    assert container["volumeMounts"] == [{"name": "tls", "mountPath": "/etc/buildkit/tls", "readOnly": True}]


def test_ephemeral_secret_is_owned_by_its_pod_and_holds_the_server_side_only():
    run = make_run_certificates("warmbuild-default-ephemeral-0a1b2c3d", 600)
    labels = run_labels("default", HolderInfo(identity="h", run_url="https://ci/run/1"))
    secret = tls_secret_manifest("ns", run.server_name, "pod-uid", run, labels)
    assert secret["metadata"]["name"] == "warmbuild-default-ephemeral-0a1b2c3d-tls"
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": run.server_name, "uid": "pod-uid"}
    ]
    assert secret["metadata"]["labels"]["warmbuild.dev/ephemeral"] == "true"
    assert secret["metadata"]["labels"]["warmbuild.dev/ephemeral-for"] == "default"
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert data == {"tls.crt": run.server_cert_pem, "tls.key": run.server_key_pem, "ca.crt": run.ca_pem}
    assert run.client.key_pem not in data.values()


def test_the_ephemeral_client_pair_is_written_owner_only_and_removed_after_the_build():
    run = make_run_certificates("warmbuild-default-ephemeral-0a1b2c3d", 600)
    ephemeral = Builder(run.server_name, "u", "tcp://10.0.0.9:1234", 1, run.server_name)
    with builder_endpoint(grant(ephemeral, run_tls=run.client), CLIENT_FILES) as endpoint:
        tls = endpoint.tls
        assert tls.server_name == run.server_name and tls.ca != CLIENT_FILES.ca  # the run's, not the pool's
        assert tls.key.read_bytes() == run.client.key_pem
        assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
        assert stat.S_IMODE(tls.key.parent.stat().st_mode) == 0o700
    assert not tls.key.parent.exists()


def test_gc_removes_run_secrets_whose_pod_is_gone():
    now = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    created = (now - timedelta(seconds=600)).isoformat()

    def secret(name, owner_uid):
        owners = [{"kind": "Pod", "uid": owner_uid}] if owner_uid else []
        return {"metadata": {"name": name, "creationTimestamp": created, "ownerReferences": owners}}

    pods = [{"metadata": {"name": "e-live", "uid": "live"}}]
    secrets = [secret("e-live-tls", "live"), secret("e-gone-tls", "gone"), secret("e-ownerless-tls", None)]
    found = {(g.kind, g.name) for g in find_garbage(pods, [], [], now, secrets)}
    assert found == {("secret", "e-gone-tls"), ("secret", "e-ownerless-tls")}
