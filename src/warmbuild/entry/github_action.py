"""The GitHub container action's entry point: `python -m warmbuild.ci.github_action main|post`.

main: mask every credential, record where the slot state will be (`$GITHUB_STATE`), map the
      inputs to a `warmbuild build` command line (ci/inputs.py) and run the CLI in this process,
      then turn a failure into an `::error` annotation (on the Dockerfile line BuildKit names).
post: release the slot that main recorded, if main did not (a cancelled or killed job).

Outputs, the step summary and the `::group::` per phase come from the CLI itself (pipeline,
ci/github.py), the same as for `warmbuild build` run in a workflow's `run:` step.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .. import cli
from ..ci.github import heredoc_entry, mask_commands, workflow_command
from ..errors import InputError
from .inputs import BUILD_INPUTS, build_invocation, split_list

CREDENTIAL_INPUTS = ("kubeconfig", "server", "token", "certificate-authority-data", "oidc-audience")
ACTION_INPUTS = (*BUILD_INPUTS, *CREDENTIAL_INPUTS)
STATE_NAME = "state-file"
KUBECONFIG_SECRET_KEYS = ("token", "client-key-data", "password", "id-token", "refresh-token", "client-secret")
# An exec plugin's `env` entries ({name, value}) often carry credentials (AWS keys, a client secret).
KUBECONFIG_SECRET_LISTS = ("env",)
_LOCATION = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+)$")


def read_inputs(environ: Mapping[str, str]) -> dict[str, str]:
    """`INPUT_<NAME>` as the runner sets it: upper-cased, hyphens kept (`INPUT_BUILD-ARGS`)."""
    return {name: environ.get(f"INPUT_{name.upper()}", "") for name in ACTION_INPUTS}


@dataclass(frozen=True)
class ClusterAccess:
    env: tuple[tuple[str, str], ...] = ()  # WARMBUILD_K8S_* for cluster.connect
    kubeconfig: str | None = None  # content, written to a private file for the run


def cluster_access(inputs: Mapping[str, str]) -> ClusterAccess:
    """Which credentials the inputs give: a kubeconfig, or a server with a token or OIDC audience;
    with a scheduler, `token` is the bearer token for the scheduler instead, or `oidc-audience` the
    audience of the job's own OIDC token sent to it (no cluster credentials on the runner at all)."""
    kubeconfig, server, token = (
        inputs.get("kubeconfig", ""),
        inputs.get("server", "").strip(),
        inputs.get("token", "").strip(),
    )
    ca, audience = inputs.get("certificate-authority-data", "").strip(), inputs.get("oidc-audience", "").strip()
    if inputs.get("scheduler", "").strip():
        if kubeconfig.strip() or server or ca:
            raise InputError(
                "with input 'scheduler', give only input 'oidc-audience' (the job's OIDC token, with "
                "permissions id-token: write) or input 'token'; no cluster credentials"
            )
        if token and audience:
            raise InputError("with input 'scheduler', give input 'oidc-audience' or input 'token', not both")
        if audience:
            return ClusterAccess(env=(("WARMBUILD_SCHEDULER_OIDC_AUDIENCE", audience),))
        return ClusterAccess(env=(("WARMBUILD_SCHEDULER_TOKEN", token),) if token else ())
    if kubeconfig.strip():
        if server or token or audience:
            raise InputError("give input 'kubeconfig' or input 'server' (with 'token' or 'oidc-audience'), not both")
        return ClusterAccess(kubeconfig=kubeconfig)
    if not server:
        for name, value in (("token", token), ("oidc-audience", audience), ("certificate-authority-data", ca)):
            if value:
                raise InputError(f"input '{name}' needs input 'server' (the API server URL)")
        return ClusterAccess()
    if bool(token) == bool(audience):
        raise InputError("input 'server' needs exactly one of input 'token' or input 'oidc-audience'")
    env = [("WARMBUILD_K8S_SERVER", server)]
    env.append(("WARMBUILD_K8S_TOKEN", token) if token else ("WARMBUILD_K8S_OIDC_AUDIENCE", audience))
    if ca:
        try:
            base64.b64decode(ca, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("input 'certificate-authority-data' is not base64 (as in a kubeconfig)") from None
        env.append(("WARMBUILD_K8S_CA_DATA", ca))
    return ClusterAccess(env=tuple(env))


def kubeconfig_secrets(text: str) -> list[str]:
    """The secret values in a kubeconfig (tokens, keys, passwords, exec plugin `env` values); every
    line if it is not YAML."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return [line for line in text.splitlines() if line.strip()]
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in KUBECONFIG_SECRET_KEYS and isinstance(value, str):
                    found.append(value)
                elif key in KUBECONFIG_SECRET_LISTS and isinstance(value, list):
                    found.extend(
                        str(item["value"]) for item in value if isinstance(item, dict) and item.get("value") is not None
                    )
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return found


def secrets_to_mask(inputs: Mapping[str, str]) -> list[str]:
    """Every credential among the raw inputs; never raises, so masking comes before validation."""
    values = [inputs.get("token", "")]
    values += kubeconfig_secrets(inputs.get("kubeconfig", "")) if inputs.get("kubeconfig", "").strip() else []
    for item in split_list(inputs.get("secrets", ""), commas=False):
        values.append(item.partition("=")[2].strip())
    return [v for v in values if v.strip()]


def dockerfile_location(lines: Iterable[str]) -> tuple[str, int] | None:
    """BuildKit's `Dockerfile:5` above a `-----` rule: the file name and line of the last error."""
    found = None
    previous = ""
    for line in lines:
        match = _LOCATION.match(previous.strip())
        if match and line.strip().startswith("-----"):
            found = (match["file"], int(match["line"]))
        previous = line
    return found


def annotation(message: str, location: tuple[str, int] | None, dockerfile: Path, workspace: Path) -> str:
    """`::error` for a failed step; on the Dockerfile line when BuildKit named one in this file."""
    if location is not None and location[0] == dockerfile.name:
        try:
            path = dockerfile.resolve().relative_to(workspace.resolve()).as_posix()
        except ValueError:
            path = None
        if path is not None:
            return workflow_command("error", message, title="warmbuild", file=path, line=location[1])
    return workflow_command("error", message, title="warmbuild")


class _WatchedStream:
    """Passes writes through and keeps the lines, to find BuildKit's error location and our error."""

    def __init__(self, target: TextIO):
        self.target = target
        self.lines: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        self.target.write(text)
        parts = (self._partial + text).split("\n")
        self._partial = parts.pop()
        self.lines.extend(parts)
        del self.lines[:-2000]
        return len(text)

    def __getattr__(self, name):
        return getattr(self.target, name)


def private_dir(environ: Mapping[str, str]) -> Path:
    """$RUNNER_TEMP/warmbuild (/github/runner_temp in the action's container: kept between main and
    post, emptied by the runner after the job, so a copy a SIGKILL left behind does not outlive the
    job), else $HOME/.warmbuild (/github/home, which lives in the runner's temp directory too).
    RUNNER_TEMP counts only if it is there: older runners pass the host's path without mounting it.
    Kubeconfig copies of runs that are gone are removed here."""
    base = environ.get("RUNNER_TEMP")
    if base and Path(base).is_dir():
        path = Path(base) / "warmbuild"
    else:
        path = Path(environ.get("HOME") or tempfile.gettempdir()) / ".warmbuild"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove_stale_copies(path)
    return path


def remove_stale_copies(directory: Path) -> list[Path]:
    """Delete `kubeconfig-<pid>` files whose process is gone (a main step killed with SIGKILL)."""
    removed = []
    for copy in directory.glob("kubeconfig-*"):
        pid = copy.name.removeprefix("kubeconfig-")
        if pid.isdigit() and not _process_alive(int(pid)):
            copy.unlink(missing_ok=True)
            removed.append(copy)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _masked_inputs(environ: Mapping[str, str], out: TextIO) -> dict[str, str]:
    """The inputs, after `::add-mask::` for each credential among them (before anything else is printed)."""
    inputs = read_inputs(environ)
    for secret in secrets_to_mask(inputs):
        for line in mask_commands(secret):
            print(line, file=out, flush=True)
    return inputs


def run_main(environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    kubeconfig_file: Path | None = None
    try:
        inputs = _masked_inputs(environ, out)
        access = cluster_access(inputs)
        invocation = build_invocation(inputs)
        private = private_dir(environ)
        state_file = (
            private / f"state-{re.sub(r'[^A-Za-z0-9_.-]', '_', environ.get('GITHUB_ACTION', 'warmbuild'))}.json"
        )
        if environ.get("GITHUB_STATE"):
            with open(environ["GITHUB_STATE"], "a", encoding="utf-8") as f:
                f.write(heredoc_entry(STATE_NAME, str(state_file)))
        flags = [f"--state-file={state_file}"]
        if access.kubeconfig is not None:
            kubeconfig_file = _write_private(private / f"kubeconfig-{os.getpid()}", access.kubeconfig)
            flags.append(f"--kubeconfig={kubeconfig_file}")
    except InputError as exc:
        print(workflow_command("error", f"warmbuild: {exc.message}", title="warmbuild input"), file=out, flush=True)
        return exc.exit_code
    os.environ.update(dict(access.env) | dict(invocation.env))
    watched = _WatchedStream(sys.stderr)
    sys.stderr = watched
    try:
        code = cli.main(invocation.argv(*flags))
    finally:
        sys.stderr = watched.target
        if kubeconfig_file is not None:
            kubeconfig_file.unlink(missing_ok=True)
    if code != 0:
        errors = [
            line.removeprefix("warmbuild: error: ") for line in watched.lines if line.startswith("warmbuild: error: ")
        ]
        context = Path(invocation.context)
        dockerfile = Path(inputs["file"]) if inputs["file"].strip() else context / "Dockerfile"
        workspace = Path(environ.get("GITHUB_WORKSPACE") or os.getcwd())
        message = errors[-1] if errors else f"warmbuild exited with status {code}"
        print(annotation(message, dockerfile_location(watched.lines), dockerfile, workspace), file=out, flush=True)
    return code


def run_post(environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Release the slot main recorded. Never fails the job: an unreleased lease expires by itself."""
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    state = environ.get(f"STATE_{STATE_NAME}", "")
    if not state or not Path(state).is_file():
        print("warmbuild: no slot to release", file=out, flush=True)
        return 0
    kubeconfig_file: Path | None = None
    try:
        inputs = _masked_inputs(environ, out)
        access = cluster_access(inputs)
        flags = [f"--state-file={state}"]
        if inputs["scheduler"].strip():
            flags.append(f"--scheduler={inputs['scheduler'].strip()}")  # the slot came from the scheduler
        if access.kubeconfig is not None:
            kubeconfig_file = _write_private(private_dir(environ) / f"kubeconfig-{os.getpid()}", access.kubeconfig)
            flags.append(f"--kubeconfig={kubeconfig_file}")
        os.environ.update(dict(access.env))
        code = cli.main(["release", *flags])
    except InputError as exc:
        code = exc.exit_code
    finally:
        if kubeconfig_file is not None:
            kubeconfig_file.unlink(missing_ok=True)
    if code != 0:
        print(
            workflow_command(
                "warning",
                "warmbuild: could not release the build slot; it frees itself when its lease expires",
                title="warmbuild",
            ),
            file=out,
            flush=True,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["main"]:
        return run_main()
    if argv == ["post"]:
        return run_post()
    print("usage: python -m warmbuild.ci.github_action main|post", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
