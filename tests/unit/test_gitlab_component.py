"""The GitLab CI/CD component template: valid by GitLab's CI schema, typed inputs, and no input
value ever interpolated into script text."""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

from warmbuild.entry.gitlab_job import GITLAB_INPUTS, read_inputs, variable_name
from warmbuild.pool.policy import FALLBACKS

TEMPLATE = Path(__file__).resolve().parents[2] / "gitlab" / "templates" / "build.yml"
HEADER, JOBS = yaml.safe_load_all(TEMPLATE.read_text())
JOB_KEY = "$[[ inputs.job-name ]]"
JOB = JOBS[JOB_KEY]
INPUTS = HEADER["spec"]["inputs"]
TEMPLATE_ONLY_INPUTS = {"job-name", "stage", "image", "oidc-audience"}  # the job's own keys, not warmbuild's
INTERPOLATION = re.compile(r"\$\[\[\s*inputs\.([A-Za-z0-9_-]+)\s*\]\]")


@pytest.fixture(scope="module")
def validator():
    # GitLab's CI schema (app/assets/javascripts/editor/schema/ci.json) as vendored by check-jsonschema.
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "gitlab-ci.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_both_documents_are_valid_by_gitlabs_ci_schema(validator):
    assert [e.message for e in validator.iter_errors(HEADER)] == []
    assert [e.message for e in validator.iter_errors(JOBS)] == []


def test_the_schema_check_is_real(validator):
    bad_header = copy.deepcopy(HEADER)
    bad_header["spec"]["inputs"]["push"]["default"] = "yes"  # a boolean input with a string default
    assert list(validator.iter_errors(bad_header))
    bad_jobs = copy.deepcopy(JOBS)
    bad_jobs[JOB_KEY]["artifacts"]["when"] = "sometimes"
    assert list(validator.iter_errors(bad_jobs))


def test_inputs_are_typed_and_checked():
    assert INPUTS["push"]["type"] == "boolean" and INPUTS["push"]["default"] is False
    assert INPUTS["no-cache"]["type"] == "boolean"
    assert INPUTS["max-wait"]["type"] == "number" and INPUTS["max-wait"]["default"] == 60
    assert INPUTS["fallback"]["options"] == list(FALLBACKS) and INPUTS["fallback"]["default"] in FALLBACKS
    assert "default" not in INPUTS["image"]  # required: there is no public step image to default to
    for name, spec in INPUTS.items():
        assert spec.get("description"), name
        if "regex" in spec:
            assert re.fullmatch(spec["regex"], str(spec["default"])), f"{name}: default must match its regex"
    assert re.fullmatch(INPUTS["builder"]["regex"], "tcp://127.0.0.11:1234")
    assert not re.fullmatch(INPUTS["builder"]["regex"], "127.0.0.11:1234")
    assert not re.fullmatch(INPUTS["namespace"]["regex"], "Bad_NS")


def test_every_warmbuild_input_reaches_the_job_as_its_variable_only():
    assert set(INPUTS) == set(GITLAB_INPUTS) | TEMPLATE_ONLY_INPUTS
    variables = JOB["variables"]
    for name in GITLAB_INPUTS:
        assert variables[variable_name(name)] == f"$[[ inputs.{name} ]]", name
    # Interpolation appears only in variable values and in the job's name, stage and image.
    interpolated = {v for k, v in variables.items() if isinstance(v, str) and INTERPOLATION.search(v)}
    assert len(interpolated) == len(GITLAB_INPUTS)
    assert INTERPOLATION.fullmatch(JOB["stage"]) and INTERPOLATION.fullmatch(JOB["image"]["name"])
    # The job's GitLab ID token for the scheduler: the only other interpolation, its audience.
    assert JOB["id_tokens"] == {"WARMBUILD_SCHEDULER_TOKEN": {"aud": "$[[ inputs.oidc-audience ]]"}}
    for key in ("script", "after_script"):
        for line in JOB[key]:
            assert "$[[" not in line and "$WARMBUILD_INPUT" not in line, line
    assert JOB["script"] == ["python -m warmbuild.entry.gitlab_job"]
    assert JOB["after_script"] == ["warmbuild release"]
    assert JOB["image"]["entrypoint"] == [""]


def test_reports_are_the_files_the_cli_writes():
    variables, reports = JOB["variables"], JOB["artifacts"]["reports"]
    assert reports == {
        "dotenv": variables["WARMBUILD_DOTENV"],
        "junit": variables["WARMBUILD_JUNIT"],
        "metrics": variables["WARMBUILD_METRICS"],
    }
    assert variables["WARMBUILD_RESULT_FILE"] in JOB["artifacts"]["paths"]
    assert JOB["artifacts"]["when"] == "always"


def test_gitlab_job_reads_the_variables():
    inputs = read_inputs(
        {"WARMBUILD_INPUT_BUILD_ARGS": "A=1", "WARMBUILD_INPUT_NO_CACHE": "true", "WARMBUILD_INPUT_SECRETS": "x=y"}
    )
    assert inputs["build-args"] == "A=1" and inputs["no-cache"] == "true"
    assert "secrets" not in inputs  # inline secret values are GitHub's; GitLab keeps them in CI/CD variables
