"""The state file a build leaves for `warmbuild release` in a CI post step (another process).

Where it lives by default is the decision here: never the working directory, which is the build
context in the common `context: .` case (the file would change the context, so `COPY . …` and
every step after it would miss the cache, and the runner's host name and PID would land in the
image). The default is a private per-user directory the post step finds without being told:

  directory  $RUNNER_TEMP/warmbuild (GitHub; emptied by the runner after each job)
             | $WORKSPACE_TMP/warmbuild (Jenkins: beside the workspace, not in it)
             | $XDG_RUNTIME_DIR/warmbuild | <tempdir>/warmbuild-<uid>, mode 0700, owned by us
             (a variable counts when it names an existing directory)
  file       state-<job>.json, <job> from the CI job's own ids, so concurrent jobs on one host
             never share a file while a later step of the same job finds it:
             github-<GITHUB_RUN_ID>-<GITHUB_RUN_ATTEMPT>-<GITHUB_JOB> | gitlab-<CI_JOB_ID> |
             jenkins-<BUILD_TAG>[-<EXECUTOR_NUMBER>] | session-<sid> (no CI: the shell's session)

`--state-file` / `WARMBUILD_STATE_FILE` win over the default.

It may hold a scheduler grant's release token (the secret that lets its holder give the slot back):
the file is created 0600 (mkstemp) and replaced atomically, and nothing prints its contents.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class ReleaseState:
    namespace: str
    lease: str
    holder: str
    kubeconfig: str | None = None
    context: str | None = None
    ephemeral_pod: str | None = None  # an ephemeral builder pod to delete
    release_token: str | None = field(default=None, repr=False)  # a scheduler grant's: secret


def state_file_path(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    given = explicit or environ.get("WARMBUILD_STATE_FILE")
    if given:
        return Path(given)
    return private_state_dir(environ) / f"state-{job_key(environ)}.json"


def job_key(environ: Mapping[str, str]) -> str:
    """The CI job's identity as a file name part (see the module docstring)."""
    if environ.get("GITHUB_RUN_ID"):
        # Not GITHUB_ACTION: it names the step (`__run`, `__run_2`), and `warmbuild release` runs
        # in a later step than the build.
        parts = [
            "github",
            environ["GITHUB_RUN_ID"],
            environ.get("GITHUB_RUN_ATTEMPT", "1"),
            environ.get("GITHUB_JOB", ""),
        ]
    elif environ.get("CI_JOB_ID"):
        parts = ["gitlab", environ["CI_JOB_ID"]]
    elif environ.get("BUILD_TAG"):
        parts = ["jenkins", environ["BUILD_TAG"], environ.get("EXECUTOR_NUMBER", "")]
    else:
        parts = ["session", str(os.getsid(0))]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(p for p in parts if p))[:200]


def private_state_dir(environ: Mapping[str, str]) -> Path:
    """The directory of default state files: created 0700, and refused when another user owns it
    (a shared temp directory lets anyone create a name first)."""
    for variable in ("RUNNER_TEMP", "WORKSPACE_TMP", "XDG_RUNTIME_DIR"):
        if environ.get(variable) and Path(environ[variable]).is_dir():
            path = Path(environ[variable]) / "warmbuild"
            break
    else:
        path = Path(tempfile.gettempdir()) / f"warmbuild-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise InputError(
            f"cannot make the state directory {path} ({exc.strerror}): set --state-file or WARMBUILD_STATE_FILE"
        ) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise InputError(
            f"the state directory {path} is not a directory of this user: remove it, "
            "or set --state-file or WARMBUILD_STATE_FILE"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def write_state(path: Path, state: ReleaseState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f)
    os.replace(tmp, path)


def read_state(path: Path) -> ReleaseState | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return ReleaseState(**{k: data.get(k) for k in ReleaseState.__dataclass_fields__})


def remove_state(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
