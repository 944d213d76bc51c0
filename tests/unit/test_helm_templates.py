"""The Helm chart (deploy/helm/warmbuild) rendered by the real helm: lint, objects, and what they say.

The API server's verdict on the same renderings, and the chart running on the testbed, are in
tests/integration/test_helm_chart.py.
"""

import base64
import json
import shlex

import pytest
from helm_render import CHART, VARIANTS, helm, of_kind, one, render, render_error, variant_args

x509 = pytest.importorskip("cryptography.x509")

tomllib = pytest.importorskip("tomllib")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_passes_for_the_defaults_and_every_documented_variant(variant):
    done = helm("lint", str(CHART), "--strict", *variant_args(variant))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_default_values_render_the_pool_and_least_privilege_access_only():
    docs = render()
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in docs)
    assert kinds == [
        ("ConfigMap", "warmbuild-builder"),
        ("ConfigMap", "warmbuild-history-default"),
        ("NetworkPolicy", "warmbuild-builder"),
        ("NetworkPolicy", "warmbuild-ephemeral"),
        ("NetworkPolicy", "warmbuild-untrusted"),
        ("PodDisruptionBudget", "warmbuild-builder"),
        ("Role", "warmbuild-builder"),
        ("Role", "warmbuild-ci"),
        ("RoleBinding", "warmbuild-builder"),
        ("RoleBinding", "warmbuild-ci"),
        ("Secret", "warmbuild-builder-tls"),
        ("Secret", "warmbuild-client-tls"),
        ("Secret", "warmbuild-tls-ca"),
        ("Service", "warmbuild-builder"),
        ("ServiceAccount", "warmbuild-builder"),
        ("ServiceAccount", "warmbuild-ci"),
        ("StatefulSet", "warmbuild-builder"),
        ("ValidatingAdmissionPolicy", "warmbuild-warmbuild-ephemeral-builders"),
        ("ValidatingAdmissionPolicy", "warmbuild-warmbuild-ephemeral-builders-run-secrets"),
        ("ValidatingAdmissionPolicyBinding", "warmbuild-warmbuild-ephemeral-builders"),
        ("ValidatingAdmissionPolicyBinding", "warmbuild-warmbuild-ephemeral-builders-run-secrets"),
    ]
    cluster_scoped = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    assert all(doc["metadata"]["namespace"] == "warmbuild" for doc in docs if doc["kind"] not in cluster_scoped)


def builder_container(docs):
    statefulset = one(docs, "StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return statefulset, container


def test_statefulset_is_a_pool_the_cli_discovers_with_a_volume_per_builder_and_a_drain_hook():
    docs = render(
        sets=(
            "pool=gpu",
            "builder.replicas=5",
            "builder.slots=3",
            "persistence.storageClassName=local-nvme",
            "persistence.size=500Gi",
            "builder.terminationGracePeriodSeconds=7200",
        )
    )
    statefulset, container = builder_container(docs)
    spec = statefulset["spec"]
    template = spec["template"]
    assert spec["replicas"] == 5
    assert spec["serviceName"] == "warmbuild-builder" == one(docs, "Service")["metadata"]["name"]
    assert one(docs, "Service")["spec"]["clusterIP"] == "None"
    assert spec["podManagementPolicy"] == "Parallel"
    # What pool discovery (src/warmbuild/pool.py) reads: the pool label, the slots annotation, the named port.
    assert template["metadata"]["labels"]["warmbuild.dev/pool"] == "gpu"
    assert spec["selector"]["matchLabels"]["warmbuild.dev/pool"] == "gpu"
    assert template["metadata"]["annotations"]["warmbuild.dev/slots"] == "3"
    assert container["ports"] == [{"name": "buildkitd", "containerPort": 1234, "protocol": "TCP"}]
    assert "--addr=tcp://0.0.0.0:1234" in container["args"]
    assert "--config=/etc/buildkit/buildkitd.toml" in container["args"]
    assert container["securityContext"] == {"privileged": True}
    # The drain: preStop, with the pod named by the downward API, bounded below the grace period.
    assert template["spec"]["terminationGracePeriodSeconds"] == 7200
    assert container["lifecycle"]["preStop"]["exec"]["command"] == [
        "warmbuild",
        "drain",
        "--timeout=7170",
        "--settle=3",
        "--poll=1",
    ]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert template["spec"]["serviceAccountName"] == "warmbuild-builder"
    assert template["spec"]["automountServiceAccountToken"] is True
    # One PVC per builder on the configured class, deleted with the release, kept on scale-down.
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"]["storageClassName"] == "local-nvme"
    assert claim["spec"]["resources"]["requests"]["storage"] == "500Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"config": "/etc/buildkit", "state": "/var/lib/buildkit", "certs": "/certs"}
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe == ["buildctl", "--addr", "unix:///run/buildkit/buildkitd.sock", "debug", "workers"]

    # A changed buildkitd.toml rolls the builders (each drains first).
    def checksum(docs):
        return builder_container(docs)[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(render(sets=("buildkitd.maxParallelism=8",))) != checksum(render())


def test_without_persistence_the_cache_is_an_emptydir():
    statefulset, _container = builder_container(render(sets=("persistence.enabled=false",)))
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert "persistentVolumeClaimRetentionPolicy" not in statefulset["spec"]
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}


def buildkitd_toml(docs) -> dict:
    return tomllib.loads(one(docs, "ConfigMap", "warmbuild-builder")["data"]["buildkitd.toml"])


@pytest.mark.parametrize(
    "size, mib",
    [("200Gi", 200 * 1024), ("1Ti", 1024 * 1024), ("512Mi", 512)],
)
def test_gc_limits_are_shares_of_the_volume(size, mib):
    config = buildkitd_toml(render(sets=(f"persistence.size={size}",)))
    worker = config["worker"]["oci"]
    # buildkitd reads "MB" as MiB (go-units RAMInBytes).
    assert worker["maxUsedSpace"] == f"{mib * 85 // 100}MB"
    assert worker["minFreeSpace"] == f"{mib * 10 // 100}MB"
    assert worker["reservedSpace"] == f"{mib * 10 // 100}MB"
    assert worker["gc"] is True
    assert worker["max-parallelism"] == 4
    assert config["worker"]["containerd"]["enabled"] is False


def test_gc_percentages_parallelism_and_extra_config_are_values():
    config = buildkitd_toml(
        render(
            sets=(
                "persistence.size=100Gi",
                "buildkitd.gc.maxUsedPercent=80",
                "buildkitd.gc.minFreePercent=15",
                "buildkitd.gc.reservedPercent=20",
                "buildkitd.maxParallelism=12",
            ),
            extra=("--set-string", 'buildkitd.extraConfig=[registry."docker.io"]\n  mirrors = ["mirror.internal"]'),
        )
    )
    worker = config["worker"]["oci"]
    assert (worker["maxUsedSpace"], worker["minFreeSpace"], worker["reservedSpace"]) == (
        "81920MB",
        "15360MB",
        "20480MB",
    )
    assert worker["max-parallelism"] == 12
    assert config["registry"]["docker.io"]["mirrors"] == ["mirror.internal"]
    assert buildkitd_toml(render(sets=("buildkitd.gc.enabled=false",)))["worker"]["oci"] == {
        "enabled": True,
        "max-parallelism": 4,
        "gc": False,
    }


def test_rootless_variant_runs_as_uid_1000_without_a_privileged_container():
    statefulset, container = builder_container(render(variant="rootless"))
    assert container["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "seccompProfile": {"type": "Unconfined"},
        "appArmorProfile": {"type": "Unconfined"},
    }
    assert "--oci-worker-no-process-sandbox" in container["args"]
    assert container["image"] == "warmbuild/buildkitd:v0.34.2-warmbuild0.1.0-rootless"
    assert statefulset["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 1000
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == "/home/user/.local/share/buildkit"
    assert "--addr=unix:///run/user/1000/buildkit/buildkitd.sock" in container["args"]
    assert "unix:///run/user/1000/buildkit/buildkitd.sock" in container["livenessProbe"]["exec"]["command"]


def pem_certificate(secret: dict, key: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"][key]))


def dns_names(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return names.get_values_for_type(x509.DNSName)


def test_default_is_mtls_with_one_certificate_per_builder_for_its_stable_dns_name():
    docs = render(sets=("builder.replicas=2",), namespace="ci-pool")
    statefulset, container = builder_container(docs)
    assert {"--tlscacert=/certs/ca.crt", "--tlscert=/certs/tls.crt", "--tlskey=/certs/tls.key"} <= set(
        container["args"]
    )
    secrets = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Secret")}
    assert set(secrets) == {"warmbuild-tls-ca", "warmbuild-builder-tls", "warmbuild-client-tls"}
    server = secrets["warmbuild-builder-tls"]
    assert sorted(server["data"]) == [
        "ca.crt",
        "warmbuild-builder-0.crt",
        "warmbuild-builder-0.key",
        "warmbuild-builder-1.crt",
        "warmbuild-builder-1.key",
    ]
    ca = pem_certificate(secrets["warmbuild-tls-ca"], "tls.crt")
    assert pem_certificate(server, "ca.crt") == ca
    for ordinal in (0, 1):
        certificate = pem_certificate(server, f"warmbuild-builder-{ordinal}.crt")
        name = f"warmbuild-builder-{ordinal}.warmbuild-builder.ci-pool.svc"
        # Its own name only: no wildcard, no Service-wide name another builder could also present.
        assert dns_names(certificate) == [name, f"{name}.cluster.local"]
        assert certificate.issuer == ca.subject
        certificate.verify_directly_issued_by(ca)
    client = pem_certificate(secrets["warmbuild-client-tls"], "tls.crt")
    client.verify_directly_issued_by(ca)
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert not dns_names(client)  # it can never pass as a builder
    assert secrets["warmbuild-client-tls"]["type"] == "kubernetes.io/tls"
    assert sorted(secrets["warmbuild-client-tls"]["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    # Each builder sees only its own directory of the Secret: subPathExpr with the pod's name.
    assert {
        "name": "certs",
        "mountPath": "/certs",
        "subPathExpr": "$(POD_NAME)",
        "readOnly": True,
    } in container["volumeMounts"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["certs"]["secret"]["secretName"] == "warmbuild-builder-tls"
    assert volumes["certs"]["secret"]["items"] == [
        {"key": f"warmbuild-builder-{n}.{ext}", "path": f"warmbuild-builder-{n}/tls.{ext}"}
        if ext
        else {"key": "ca.crt", "path": f"warmbuild-builder-{n}/ca.crt"}
        for n in (0, 1)
        for ext in ("crt", "key", "")
    ]
    # No pod mounts the CA's key.
    assert all(
        volume.get("secret", {}).get("secretName") != "warmbuild-tls-ca"
        for doc in docs
        if doc["kind"] in ("StatefulSet", "Deployment")
        for volume in doc["spec"]["template"]["spec"].get("volumes", ())
    )


def test_every_ordinal_the_pool_can_reach_gets_a_certificate():
    docs = render(
        sets=("scheduler.enabled=true", "scheduler.tls.existingSecret=s", "autoscaling.enabled=true"),
        extra=("--set", "autoscaling.maxReplicas=5", "--set", "builder.replicas=2"),
    )
    server = one(docs, "Secret", "warmbuild-builder-tls")
    assert sorted(k for k in server["data"] if k.endswith(".crt") and k != "ca.crt") == [
        f"warmbuild-builder-{n}.crt" for n in range(5)
    ]


def test_plaintext_only_when_opted_out():
    docs = render(variant="plaintext")
    statefulset, container = builder_container(docs)
    assert not [arg for arg in container["args"] if arg.startswith("--tls")]
    assert not of_kind(docs, "Secret")
    assert "certs" not in {v["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    for variant in ("default", "mtls", "mtls-cert-manager", "rootless"):
        _, container = builder_container(render(variant=variant))
        assert "--tlscert=/certs/tls.crt" in container["args"], variant


def test_mtls_variant_serves_each_builder_its_own_pair_from_the_existing_secret():
    docs = render(variant="mtls")
    statefulset, container = builder_container(docs)
    assert {"--tlscacert=/certs/ca.crt", "--tlscert=/certs/tls.crt", "--tlskey=/certs/tls.key"} <= set(
        container["args"]
    )
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["certs"]["secret"]["secretName"] == "warmbuild-builder-tls"
    assert {"key": "warmbuild-builder-2.key", "path": "warmbuild-builder-2/tls.key"} in volumes["certs"]["secret"][
        "items"
    ]
    assert {"name": "certs", "mountPath": "/certs", "subPathExpr": "$(POD_NAME)", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert not of_kind(docs, "Certificate")  # certificates come from the Secret, not cert-manager
    assert not of_kind(docs, "Secret")  # nor from the chart


def test_cert_manager_variant_issues_one_certificate_per_builder_and_a_client_certificate():
    docs = render(variant="mtls-cert-manager")
    certificates = {doc["metadata"]["name"]: doc["spec"] for doc in of_kind(docs, "Certificate")}
    assert set(certificates) == {
        "warmbuild-ca",
        "warmbuild-builder-0-tls",
        "warmbuild-builder-1-tls",
        "warmbuild-builder-2-tls",
        "warmbuild-client-tls",
    }
    assert certificates["warmbuild-ca"]["isCA"] is True
    for ordinal in range(3):
        server = certificates[f"warmbuild-builder-{ordinal}-tls"]
        assert server["secretName"] == f"warmbuild-builder-{ordinal}-tls"
        assert server["usages"] == ["server auth"]
        name = f"warmbuild-builder-{ordinal}.warmbuild-builder.warmbuild.svc"
        assert server["dnsNames"] == [name, f"{name}.cluster.local"]
        assert server["issuerRef"] == {"name": "warmbuild-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert not [n for spec in certificates.values() for n in spec.get("dnsNames", ()) if "*" in n]
    assert certificates["warmbuild-client-tls"]["usages"] == ["client auth"]
    assert sorted(doc["metadata"]["name"] for doc in of_kind(docs, "Issuer")) == [
        "warmbuild-ca",
        "warmbuild-selfsigned",
    ]
    assert not of_kind(docs, "Secret")
    statefulset, container = builder_container(docs)
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    sources = volumes["certs"]["projected"]["sources"]
    assert [source["secret"]["name"] for source in sources] == [f"warmbuild-builder-{n}-tls" for n in range(3)]
    assert sources[1]["secret"]["items"] == [
        {"key": "tls.crt", "path": "warmbuild-builder-1/tls.crt"},
        {"key": "tls.key", "path": "warmbuild-builder-1/tls.key"},
        {"key": "ca.crt", "path": "warmbuild-builder-1/ca.crt"},
    ]
    assert {"name": "certs", "mountPath": "/certs", "subPathExpr": "$(POD_NAME)", "readOnly": True} in container[
        "volumeMounts"
    ]
    # An issuer of the user's own replaces the bootstrap CA.
    own = render(
        variant="mtls-cert-manager",
        sets=("tls.certManager.issuerRef.name=corp-ca", "tls.certManager.issuerRef.kind=ClusterIssuer"),
    )
    assert not of_kind(own, "Issuer")
    assert {doc["spec"]["issuerRef"]["name"] for doc in of_kind(own, "Certificate")} == {"corp-ca"}


def rules(role: dict) -> list[tuple]:
    return sorted(
        (
            tuple(rule["apiGroups"]),
            tuple(rule["resources"]),
            tuple(sorted(rule["verbs"])),
            tuple(rule.get("resourceNames", ())),
        )
        for rule in role["rules"]
    )


POOL_RULES = [
    (("",), ("configmaps",), ("get", "patch", "update"), ("warmbuild-history-default",)),
    (("",), ("pods",), ("get", "list", "watch"), ()),
    (("apps",), ("statefulsets",), ("get", "list", "watch"), ()),
    (("coordination.k8s.io",), ("leases",), ("create", "get", "list", "patch", "update", "watch"), ()),
]
CI_RULES = sorted(
    POOL_RULES
    + [
        (("",), ("events",), ("get", "list"), ()),
        (("",), ("pods",), ("create", "delete"), ()),
        (("",), ("secrets",), ("create",), ()),
    ]
)


def test_rbac_is_least_privilege_for_builders_and_ci_steps():
    docs = render()
    builder = one(docs, "Role", "warmbuild-builder")
    assert rules(builder) == [
        (("",), ("pods",), ("get", "patch"), ("warmbuild-builder-0", "warmbuild-builder-1", "warmbuild-builder-2")),
        (("coordination.k8s.io",), ("leases",), ("get", "list", "watch"), ()),
    ]
    assert rules(one(docs, "Role", "warmbuild-ci")) == CI_RULES
    binding = one(docs, "RoleBinding", "warmbuild-ci")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "warmbuild-ci", "namespace": "warmbuild"}]
    assert binding["roleRef"]["name"] == "warmbuild-ci"
    assert one(docs, "ServiceAccount", "warmbuild-ci")["automountServiceAccountToken"] is False
    assert one(docs, "RoleBinding", "warmbuild-builder")["subjects"][0]["name"] == "warmbuild-builder"
    assert not of_kind(docs, "ClusterRole")
    # Without ephemeral builders and history, the CI step needs pools and leases only.
    slim = render(sets=("rbac.ci.ephemeralBuilders=false", "rbac.ci.history=false"))
    assert rules(one(slim, "Role", "warmbuild-ci")) == POOL_RULES[1:]
    # No pod create without the admission policy, and no history ConfigMap nobody may write.
    assert not of_kind(slim, "ValidatingAdmissionPolicy") and not of_kind(slim, "ValidatingAdmissionPolicyBinding")
    assert [cm["metadata"]["name"] for cm in of_kind(slim, "ConfigMap")] == ["warmbuild-builder"]
    # Nothing anywhere deletes a Lease or writes a ConfigMap other than the history, by name.
    for role in of_kind(docs, "Role"):
        for rule in role["rules"]:
            assert not ("leases" in rule["resources"] and "delete" in rule["verbs"]), role["metadata"]["name"]
            if "configmaps" in rule["resources"]:
                assert rule["resourceNames"] == ["warmbuild-history-default"] and "create" not in rule["verbs"]
    # Runner identities of one's own: extra subjects (e.g. an OIDC group), no ServiceAccount.
    groups = render(
        extra=(
            "--set",
            "rbac.ci.serviceAccount.create=false",
            "--set-json",
            'rbac.ci.extraSubjects=[{"kind":"Group","name":"ci-runners","apiGroup":"rbac.authorization.k8s.io"}]',
        )
    )
    assert not [sa for sa in of_kind(groups, "ServiceAccount") if sa["metadata"]["name"] == "warmbuild-ci"]
    assert one(groups, "RoleBinding", "warmbuild-ci")["subjects"] == [
        {"kind": "Group", "name": "ci-runners", "apiGroup": "rbac.authorization.k8s.io"}
    ]


def test_network_policy_admits_ci_runners_and_the_scheduler_to_buildkitd_only():
    policy = one(render(), "NetworkPolicy", "warmbuild-builder")
    assert policy["spec"]["podSelector"]["matchLabels"]["warmbuild.dev/pool"] == "default"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "buildkitd", "protocol": "TCP"}]
    # A pod label alone, in the release's namespace: not any pod of any namespace that labels itself.
    assert rule["from"] == [{"podSelector": {"matchLabels": {"warmbuild.dev/ci-runner": "true"}}}]
    with_scheduler = one(render(variant="scheduler"), "NetworkPolicy", "warmbuild-builder")
    assert {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "warmbuild",
                "app.kubernetes.io/instance": "warmbuild",
                "app.kubernetes.io/component": "scheduler",
            }
        }
    } in with_scheduler["spec"]["ingress"][0]["from"]
    runners = one(
        render(
            extra=(
                "--set-json",
                'networkPolicy.ciRunners=[{"namespaceSelector":{"matchLabels":'
                '{"kubernetes.io/metadata.name":"arc-runners"}}}]',
            )
        ),
        "NetworkPolicy",
        "warmbuild-builder",
    )
    assert runners["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "arc-runners"}}}
    ]
    # No peers at all must mean "nobody", never an empty `from` (which admits everyone).
    closed = render(extra=("--set-json", "networkPolicy.ciRunners=[]"))
    assert one(closed, "NetworkPolicy", "warmbuild-builder")["spec"]["ingress"] == []
    assert one(closed, "NetworkPolicy", "warmbuild-ephemeral")["spec"]["ingress"] == []
    assert not of_kind(render(sets=("networkPolicy.enabled=false",)), "NetworkPolicy")


def test_ephemeral_builders_admit_the_same_peers_and_untrusted_ones_reach_nothing_in_the_cluster():
    objects = render()
    ephemeral = one(objects, "NetworkPolicy", "warmbuild-ephemeral")
    assert ephemeral["spec"]["podSelector"]["matchLabels"] == {"warmbuild.dev/ephemeral": "true"}
    assert ephemeral["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"warmbuild.dev/ci-runner": "true"}}}
    ]
    untrusted = one(objects, "NetworkPolicy", "warmbuild-untrusted")
    assert untrusted["spec"]["podSelector"]["matchLabels"] == {
        "warmbuild.dev/ephemeral": "true",
        "warmbuild.dev/untrusted": "true",
    }
    assert untrusted["spec"]["policyTypes"] == ["Egress"]
    dns, outside = untrusted["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    (block,) = outside["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(block["ipBlock"]["except"])
    mirror = {"podSelector": {"matchLabels": {"app": "registry-mirror"}}}
    widened = one(
        render(extra=("--set-json", f"networkPolicy.untrustedEgress.extraTo=[{json.dumps(mirror)}]")),
        "NetworkPolicy",
        "warmbuild-untrusted",
    )
    assert widened["spec"]["egress"][1]["to"][1] == mirror


def test_pdb_takes_one_builder_at_a_time():
    pdb = one(render(), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "builder"


def test_scheduler_variant_renders_the_https_service_its_access_config_and_rbac():
    docs = render(variant="scheduler")
    deployment = one(docs, "Deployment", "warmbuild-scheduler")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["warmbuild"]
    assert container["args"] == [
        "scheduler",
        "--listen=0.0.0.0:8443",
        "--tls-cert=/tls/tls.crt",
        "--tls-key=/tls/tls.key",
        "--namespace=$(POD_NAMESPACE)",
        "--auth-config=/etc/warmbuild/auth-config.yaml",
        "--ephemeral-config=/etc/warmbuild/ephemeral-config.yaml",
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "warmbuild-scheduler-tls"
    import yaml

    access = yaml.safe_load(one(docs, "ConfigMap", "warmbuild-scheduler")["data"]["auth-config.yaml"])
    assert access == {
        "grants": [{"pools": ["default"], "users": ["system:serviceaccount:warmbuild:warmbuild-ci"]}],
        "audiences": ["warmbuild-scheduler"],
        "limits": {"concurrent_requests": 16, "held_slots": 0},
    }
    assert one(docs, "Service", "warmbuild-scheduler")["spec"]["ports"][0]["port"] == 8443
    # Pod create only for the ephemeral builders of untrusted callers, under the admission policies.
    assert rules(one(docs, "Role", "warmbuild-scheduler")) == CI_RULES
    assert yaml.safe_load(one(docs, "ConfigMap", "warmbuild-scheduler")["data"]["ephemeral-config.yaml"]) == {}
    policy, _ = admission(docs)
    assert "system:serviceaccount:warmbuild:warmbuild-scheduler" in policy["spec"]["matchConditions"][0]["expression"]
    without = render(variant="scheduler", sets=("scheduler.ephemeralBuilders=false",))
    assert rules(one(without, "Role", "warmbuild-scheduler")) == POOL_RULES  # never pod create
    assert "--ephemeral-config" not in str(one(without, "Deployment", "warmbuild-scheduler"))
    policy, _ = admission(without)
    assert "warmbuild-scheduler" not in policy["spec"]["matchConditions"][0]["expression"]
    cluster_role = one(docs, "ClusterRole")
    assert rules(cluster_role) == [(("authentication.k8s.io",), ("tokenreviews",), ("create",), ())]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "warmbuild-scheduler", "namespace": "warmbuild"}]
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"] == "warmbuild-warmbuild-scheduler"


def test_hpa_variant_scales_the_statefulset_on_desired_builders():
    docs = render(variant="autoscaling-hpa")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "warmbuild-builder",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {
        "name": "warmbuild_pool_desired_builders",
        "selector": {"matchLabels": {"pool": "default"}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    statefulset, _ = builder_container(docs)
    assert "replicas" not in statefulset["spec"]  # the HPA owns it; helm upgrades must not reset it
    # The builder may patch its own pod at every ordinal the HPA can create.
    names = one(docs, "Role", "warmbuild-builder")["rules"][0]["resourceNames"]
    assert names == [f"warmbuild-builder-{i}" for i in range(8)]
    assert not of_kind(docs, "ScaledObject")


def test_keda_variant_scales_on_the_same_metric_from_prometheus():
    docs = render(variant="autoscaling-keda")
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 8)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == 'max(warmbuild_pool_desired_builders{pool="default",namespace="warmbuild"})'
    assert trigger["metadata"]["threshold"] == "1"
    assert (
        scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"
        ]
        == 900
    )
    assert not of_kind(docs, "HorizontalPodAutoscaler")


@pytest.mark.parametrize(
    "sets, message",
    [
        (
            ("builder.terminationGracePeriodSeconds=600", "drain.timeoutSeconds=600"),
            "drain.timeoutSeconds (600) must be below builder.terminationGracePeriodSeconds (600)",
        ),
        (("autoscaling.enabled=true",), "autoscaling.enabled needs scheduler.enabled"),
        (("scheduler.enabled=true",), "scheduler.tls.existingSecret: the scheduler serves HTTPS only"),
        (
            (
                "scheduler.enabled=true",
                "scheduler.tls.existingSecret=s",
                "autoscaling.enabled=true",
                "autoscaling.minReplicas=5",
                "autoscaling.maxReplicas=3",
            ),
            "autoscaling.maxReplicas (3) must not be below autoscaling.minReplicas (5)",
        ),
    ],
)
def test_combinations_the_schema_cannot_express_fail_with_a_message_naming_the_fields(sets, message):
    assert message in render_error(sets=sets), shlex.join(sets)


def test_drain_timeout_defaults_to_the_grace_period_minus_30s():
    _, container = builder_container(render(sets=("builder.terminationGracePeriodSeconds=300",)))
    assert "--timeout=270" in container["lifecycle"]["preStop"]["exec"]["command"]
    _, container = builder_container(render(sets=("drain.enabled=false",)))
    assert "lifecycle" not in container


POD_POLICY = "warmbuild-warmbuild-ephemeral-builders"
SECRET_POLICY = "warmbuild-warmbuild-ephemeral-builders-run-secrets"


def admission(docs, name: str = POD_POLICY):
    return one(docs, "ValidatingAdmissionPolicy", name), one(docs, "ValidatingAdmissionPolicyBinding", name)


def messages(policy) -> list[str]:
    return [v["message"] for v in policy["spec"]["validations"]]


def test_the_admission_policy_checks_pods_the_ci_identities_create_or_delete_in_the_release_namespace():
    policy, binding = admission(render())
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "DELETE"], "resources": ["pods"]}
    ]
    (condition,) = spec["matchConditions"]
    # The CI identity, and the scheduler's ServiceAccount (it starts ephemeral builders for untrusted
    # callers; named even before the scheduler is enabled, so it is checked from its first pod).
    assert condition["expression"] == (
        'request.userInfo.username in ["system:serviceaccount:warmbuild:warmbuild-ci",'
        '"system:serviceaccount:warmbuild:warmbuild-scheduler"]'
    )
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
        "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "warmbuild"}}},
    }
    # One message per rule, each naming what it refuses (the integration tests match on them).
    texts = messages(policy)
    assert len(set(texts)) == len(texts)
    for phrase in (
        "ephemeral builder pods only (label warmbuild.dev/ephemeral=true)",
        "host namespaces",
        "hostPath volumes are refused",
        "the pool label warmbuild.dev/pool is refused",
        "owner references are refused",
        "configured builder image only (moby/buildkit:v0.34.2, moby/buildkit:v0.34.2-rootless)",
        "ServiceAccount default without its token",
        "may delete ephemeral builder pods only",
    ):
        assert sum(phrase in text for text in texts) == 1, phrase
    # The chart's builders are privileged by default, and so may ephemeral builders be.
    assert not [text for text in texts if "privileged containers are refused" in text]
    # A pod mounts only the Secret named after itself, and is named as warmbuild names it.
    secret_rule = next(v for v in spec["validations"] if "own run certificate Secret" in v["message"])
    assert "object.metadata.name + '-tls'" in secret_rule["expression"]
    assert any("warmbuild-<pool>-ephemeral-<8 hex digits>" in text for text in texts)


def test_ci_steps_may_create_only_run_certificate_secrets():
    policy, binding = admission(render(), SECRET_POLICY)
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["secrets"]}
    ]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "warmbuild"
    }
    texts = messages(policy)
    for phrase in (
        "never change one",
        "kubernetes.io/tls only",
        "<ephemeral builder pod>-tls",
        "owned by its ephemeral",
    ):
        assert sum(phrase in text for text in texts) == 1, phrase


def test_the_admission_policy_follows_the_ci_roles_subjects_and_the_pools_ephemeral_settings():
    docs = render(
        extra=(
            "--set",
            "builder.mode=rootless",
            "--set-json",
            'ephemeral.images=["registry.internal/buildkit:v0.34.2-rootless"]',
            "--set-json",
            'rbac.ci.extraSubjects=[{"kind":"Group","name":"ci-runners","apiGroup":"rbac.authorization.k8s.io"},'
            '{"kind":"User","name":"jenkins"},{"kind":"ServiceAccount","name":"runner","namespace":"gitlab"}]',
        )
    )
    policy, _ = admission(docs)
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == (
        'request.userInfo.username in ["system:serviceaccount:warmbuild:warmbuild-ci","jenkins",'
        '"system:serviceaccount:gitlab:runner","system:serviceaccount:warmbuild:warmbuild-scheduler"] '
        '|| request.userInfo.groups.exists(g, g in ["ci-runners"])'
    )
    texts = messages(policy)
    assert any("privileged containers are refused" in text for text in texts)  # a rootless pool
    images = next(v for v in policy["spec"]["validations"] if "configured builder image" in v["message"])
    assert '["registry.internal/buildkit:v0.34.2-rootless"]' in images["expression"]
    # ephemeral.mode overrides the builders' mode.
    privileged = render(sets=("builder.mode=rootless", "ephemeral.mode=privileged"))
    assert not [t for t in messages(admission(privileged)[0]) if "privileged containers are refused" in t]
