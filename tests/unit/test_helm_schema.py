"""values.schema.json: bad values fail at install/template time with a message naming the field."""

import json

import pytest
import yaml
from helm_render import CHART, VARIANTS, render_error

jsonschema = pytest.importorskip("jsonschema")


@pytest.mark.parametrize(
    "args, field, says",
    [
        (("--set", "builder.slots=0"), "/builder/slots", "minimum"),
        (("--set", "builder.mode=root"), "/builder/mode", "'privileged', 'rootless'"),
        (("--set", "persistence.size=200GB"), "/persistence/size", "does not match pattern"),
        (("--set", "pool=Team_A"), "/pool", "does not match pattern"),
        (("--set", "builder.replica=3"), "/builder", "additional properties 'replica' not allowed"),
        (("--set", "autoscaling.mode=cpu"), "/autoscaling/mode", "'hpa', 'keda'"),
        (("--set", "builder.terminationGracePeriodSeconds=10"), "/builder/terminationGracePeriodSeconds", "minimum"),
        (("--set-json", "drain.command=[]"), "/drain/command", "minItems"),
        (("--set-json", "networkPolicy.ciRunners=[{}]"), "/networkPolicy/ciRunners/0", "minProperties"),
        (("--set", "podDisruptionBudget.maxUnavailable=lots"), "/podDisruptionBudget/maxUnavailable", ""),
        (
            ("--set", "persistence.retentionPolicy.whenScaled=Keep"),
            "/persistence/retentionPolicy/whenScaled",
            "'Retain', 'Delete'",
        ),
        (("--set", "buildkitd.gc.maxUsedPercent=120"), "/buildkitd/gc/maxUsedPercent", "maximum"),
        (
            ("--set", "tls.certManager.issuerRef.kind=Vault"),
            "/tls/certManager/issuerRef/kind",
            "'Issuer', 'ClusterIssuer'",
        ),
        (("--set-json", 'scheduler.access.grants=[{"pools":["default"]}]'), "/scheduler/access/grants/0", ""),
        (("--set", "builder.image.repository="), "/builder/image/repository", "minLength"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(args, field, says):
    error = render_error(extra=args)
    assert "values don't meet the specifications of the schema" in error
    assert f"at '{field}'" in error, error
    assert says in error, error


def test_the_schema_is_draft_07_and_accepts_the_defaults_and_every_variant():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    for values in filter(None, VARIANTS.values()):
        merged = _merge(defaults, yaml.safe_load((CHART / "ci" / values).read_text()))
        jsonschema.validate(merged, schema)


def test_every_value_is_described_by_the_schema():
    """additionalProperties is false everywhere values.yaml has a fixed shape, so a typo fails."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value, node, path):
        if isinstance(value, dict) and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '/'} admits unknown keys"
            for key, child in value.items():
                assert key in node["properties"], f"{path}/{key} is in values.yaml but not in the schema"
                walk(child, node["properties"][key], f"{path}/{key}")

    walk(defaults, schema, "")


def _merge(base, override):
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override
