"""Workload keys: which builds share a cache, and so which builder they prefer. Pure.

A key is derived once per build (`derive_workload_key`) and then travels as one `WorkloadKey` with
its three forms, so no caller truncates or hashes on its own:

- `value`, the whole key: what rendezvous hashing ranks builders by;
- `hash`, a SHA-256 prefix of the whole value: what the pool's history and the slot Lease record,
  so a long key written by one build is matched by the next, and repository names stay out of the
  history;
- `annotation`, the value cut to `names.WORKLOAD_KEY_ANNOTATION_MAX` characters: what `pool status` shows people.

The default key is repository + Dockerfile path. Targets of one Dockerfile share most of their
layers (a `--target deps` build computes the stages the full build starts from), so they share a
builder unless the user asks to split them (`by_target`). Under `build --uv` the key names the
Dockerfile the user wrote, not the rewritten copy in a temporary folder.

Through the scheduler, a caller whose CI identity the API server verified (an OIDC token) does not
choose the repository part: `scoped_key` puts its verified repository first and keeps only the part
the job may choose (`path`: Dockerfile path and target, or its --cache-key). A key of repository A
can never equal a key of repository B, whatever the job sends.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..kube.names import WORKLOAD_KEY_ANNOTATION_MAX


def key_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WorkloadKey:
    """A stable identity for 'builds that share a cache'."""

    value: str
    source: str  # explicit | repository+dockerfile | repository+dockerfile+target | verified-repository+…
    path: str = ""  # the part a job may choose: Dockerfile path (and target), or the explicit key

    @property
    def hash(self) -> str:
        return key_hash(self.value)

    @property
    def annotation(self) -> str:
        return self.value[:WORKLOAD_KEY_ANNOTATION_MAX]


def explicit_key(value: str) -> WorkloadKey:
    """A key given as is (`--cache-key`, or by a scheduler caller)."""
    return WorkloadKey(value=value, source="explicit", path=value)


def derive_workload_key(
    repository: str, dockerfile: str, target: str | None = None, *, explicit: str | None = None, by_target: bool = False
) -> WorkloadKey:
    """The key of one build: `explicit` if given, else repository + Dockerfile path (+ target when
    `by_target`). `dockerfile` is relative to the context, as the user names it."""
    if explicit:
        return explicit_key(explicit)
    if by_target and target:
        path = f"{dockerfile}|{target}"
        return WorkloadKey(value=f"{repository}|{path}", source="repository+dockerfile+target", path=path)
    return WorkloadKey(value=f"{repository}|{dockerfile}", source="repository+dockerfile", path=dockerfile)


def scoped_key(verified_repository: str, requested: str, path: str = "") -> WorkloadKey:
    """The key of a caller whose repository was verified: that repository, then the part the job
    chose (`path`; without it, `requested` less any repository part it claims)."""
    chosen = path or (requested.split("|", 1)[1] if "|" in requested else requested)
    return WorkloadKey(value=f"{verified_repository}|{chosen}", source="verified-repository+path", path=chosen)
