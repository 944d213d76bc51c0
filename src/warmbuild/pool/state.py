"""The state file a build leaves for `warmbuild release` in a CI post step (another process).

It may hold a scheduler grant's release token (the secret that lets its holder give the slot back):
the file is created 0600 (mkstemp) and replaced atomically, and nothing prints its contents.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_STATE_FILE = "warmbuild-state.json"


@dataclass(frozen=True)
class ReleaseState:
    namespace: str
    lease: str
    holder: str
    kubeconfig: str | None = None
    context: str | None = None
    ephemeral_pod: str | None = None  # an ephemeral builder pod to delete
    release_token: str | None = field(default=None, repr=False)  # a scheduler grant's: secret


def state_file_path(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("WARMBUILD_STATE_FILE") or DEFAULT_STATE_FILE)


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
