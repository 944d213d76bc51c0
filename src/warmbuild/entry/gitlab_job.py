"""The GitLab component's job: `python -m warmbuild.ci.gitlab_job`.

The component (gitlab/templates/build.yml) passes each input through a job variable,
`WARMBUILD_INPUT_<NAME>` (upper case, `-` → `_`), never through the script's text, so no input
value is ever parsed by a shell. This maps them to `warmbuild build` (ci/inputs.py) and runs the
CLI in this process; dotenv, JUnit, metrics and log sections come from the CLI under GITLAB_CI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from .. import cli
from ..errors import InputError
from .inputs import BUILD_INPUTS, build_invocation

# Inline secret values (`secrets`) are GitHub's; in GitLab secrets live in CI/CD variables.
GITLAB_INPUTS = tuple(name for name in BUILD_INPUTS if name != "secrets")


def variable_name(input_name: str) -> str:
    return "WARMBUILD_INPUT_" + input_name.upper().replace("-", "_")


def read_inputs(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: environ.get(variable_name(name), "") for name in GITLAB_INPUTS}


def main() -> int:
    try:
        invocation = build_invocation(read_inputs(os.environ))
    except InputError as exc:
        print(f"warmbuild: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return cli.main(invocation.argv())


if __name__ == "__main__":
    sys.exit(main())
