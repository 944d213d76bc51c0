"""The chart's gateway, as rendered (real helm): who holds which CA, what HAProxy checks, who may
reach what. The running gateway on the testbed: tests/integration/test_gateway.py."""

from __future__ import annotations

import base64

from helm_render import one, render, render_error

GATEWAY = ("scheduler.enabled=true", "gateway.enabled=true", "gateway.hosts={build.example.com}")


def secret_data(docs: list[dict], name: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in one(docs, "Secret", name)["data"].items()}


def mounted_secrets(workload: dict) -> set[str]:
    spec = workload["spec"]["template"]["spec"]
    return {v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}


def test_the_grant_ca_key_is_mounted_by_the_scheduler_alone_and_builders_never_trust_it():
    docs = render(sets=GATEWAY)
    grant = secret_data(docs, "warmbuild-scheduler-grant-ca")
    assert b"PRIVATE KEY" in grant["tls.key"]
    scheduler = one(docs, "Deployment", "warmbuild-scheduler")
    gateway = one(docs, "Deployment", "warmbuild-gateway")
    builders = one(docs, "StatefulSet", "warmbuild-builder")
    assert "warmbuild-scheduler-grant-ca" in mounted_secrets(scheduler)
    assert "warmbuild-scheduler-grant-ca" not in mounted_secrets(gateway) | mounted_secrets(builders)
    builder_ca = secret_data(docs, "warmbuild-builder-tls")["ca.crt"]
    assert grant["tls.crt"] != builder_ca and grant["tls.crt"] not in builder_ca
    gateway_tls = secret_data(docs, "warmbuild-gateway-tls")
    assert gateway_tls["grant-ca.crt"] == grant["tls.crt"]  # the gateway verifies runners with it
    assert gateway_tls["upstream-ca.crt"] == builder_ca + grant["tls.crt"]
    assert grant["gateway-ca.crt"] == builder_ca  # what runners verify the gateway with
    args = scheduler["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--gateway-address=build.example.com:8443" in args and "--grant-ca-key=/grant/tls.key" in args


def test_haproxy_requires_a_grant_certificate_naming_the_builder_and_verifies_the_builder():
    docs = render(sets=GATEWAY)
    config = one(docs, "ConfigMap", "warmbuild-gateway")["data"]["haproxy.cfg"]
    assert "ca-file /etc/warmbuild-gateway/tls/grant-ca.crt verify required" in config
    assert "reject unless { ssl_c_s_dn(CN),lower,strcmp(sess.builder) eq 0 }" in config
    assert "ssl verify required ca-file /etc/warmbuild-gateway/tls/upstream-ca.crt" in config
    assert "server scheduler warmbuild-scheduler.warmbuild.svc:8443" in config  # passed through
    pod = one(docs, "Deployment", "warmbuild-gateway")["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in pod["containers"]}
    assert images["haproxy"] == "haproxy:2.6" and images["sync"].startswith("warmbuild/warmbuild:")
    assert one(docs, "Service", "warmbuild-gateway")["spec"]["type"] == "LoadBalancer"


def test_builders_admit_the_gateway_and_the_gateway_admits_everyone_on_its_port():
    docs = render(sets=GATEWAY)
    gateway_pods = {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "warmbuild",
                "app.kubernetes.io/instance": "warmbuild",
                "app.kubernetes.io/component": "gateway",
            }
        }
    }
    for name in ("warmbuild-builder", "warmbuild-ephemeral"):
        assert gateway_pods in one(docs, "NetworkPolicy", name)["spec"]["ingress"][0]["from"]
    (rule,) = one(docs, "NetworkPolicy", "warmbuild-gateway")["spec"]["ingress"]
    assert rule == {"ports": [{"port": "gateway", "protocol": "TCP"}]}
    role = one(docs, "Role", "warmbuild-gateway")
    assert all(set(r["verbs"]) == {"get", "list", "watch"} for r in role["rules"])


def test_the_gateway_needs_the_charts_generated_certificates():
    message = render_error(sets=(*GATEWAY, "tls.certManager.enabled=true"))
    assert "gateway.enabled needs tls.enabled with the chart's generated certificates" in message
    assert not [
        d
        for d in render(sets=("scheduler.enabled=true", "scheduler.tls.existingSecret=s"))
        if "gateway" in d["metadata"]["name"]
    ]


def test_keys_on_the_gateways_paths_are_ec_and_the_builders_keep_theirs():
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    docs = render(sets=GATEWAY)
    grant = secret_data(docs, "warmbuild-scheduler-grant-ca")
    gateway_tls = secret_data(docs, "warmbuild-gateway-tls")
    scheduler = secret_data(docs, "warmbuild-scheduler-tls")
    for pem in (grant["tls.key"], gateway_tls["front.pem"], gateway_tls["client.pem"], scheduler["tls.key"]):
        assert isinstance(load_pem_private_key(pem, password=None), ec.EllipticCurvePrivateKey)
    front = x509.load_pem_x509_certificate(gateway_tls["front.pem"])
    assert isinstance(front.public_key(), ec.EllipticCurvePublicKey) and front.public_key().curve.name == "secp256r1"
    builders = secret_data(docs, "warmbuild-builder-tls")
    assert isinstance(load_pem_private_key(builders["warmbuild-builder-0.key"], password=None), rsa.RSAPrivateKey)


def test_the_gateway_offers_tls_session_reuse_to_builders_and_logs_whether_it_resumed():
    config = one(render(sets=GATEWAY), "ConfigMap", "warmbuild-gateway")["data"]["haproxy.cfg"]
    server = next(line for line in config.splitlines() if line.strip().startswith("server builder "))
    assert "ssl-reuse" in server.split() and "no-ssl-reuse" not in server
    assert "resumed=%[ssl_bc_is_resumed]" in config
