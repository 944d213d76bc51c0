"""Whether a build's change is trusted, from what the CI platform says about it, and what an
untrusted build may not do.

A pool is one trust domain: a warm builder's disk and the registry cache are read by every build
on it. A change anyone may have written — a pull or merge request from a fork — must reach
neither: it gets an ephemeral builder with cache import only (placement, `cache`), and it may not
name a builder directly (`check_direct_builder`: a direct builder is shared and warm too).

The decision fails closed. Every pull-request-like event is judged by where its head comes from
(another repository, or a fork, is untrusted), and one that cannot be judged — the event file
missing, unreadable or without the fields that tell — is untrusted. `--trusted` / `--untrusted`
override it. Reading GitHub's event file is the only IO; the rules are pure functions of the
event's name and payload (`github_trust`) or of GitLab's and Jenkins' variables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InputError

# Events whose payload carries `pull_request` with its head and base repositories.
GITHUB_PULL_REQUEST_EVENTS = (
    "pull_request",
    "pull_request_target",
    "pull_request_review",
    "pull_request_review_comment",
)


@dataclass(frozen=True)
class Trust:
    untrusted: bool
    reason: str  # why, for messages: "pull_request from fork alice/app", "--trusted", "push event"


def decide_trust(flag: bool | None, environ: Mapping[str, str]) -> Trust:
    """`flag` is `--untrusted` (True) / `--trusted` (False) / neither (None: the CI event decides)."""
    if flag is True:
        return Trust(True, "--untrusted")
    if flag is False:
        return Trust(False, "--trusted")
    return change_trust(environ)


def change_trust(environ: Mapping[str, str]) -> Trust:
    """The CI platform's word on the change: GitHub's event, GitLab's merge request, Jenkins' change."""
    event = environ.get("GITHUB_EVENT_NAME")
    if event:
        return github_trust(event, _read_event(environ.get("GITHUB_EVENT_PATH")))
    if environ.get("GITLAB_CI") or environ.get("CI_PIPELINE_SOURCE") or _gitlab_merge_request(environ):
        return gitlab_trust(environ)
    if environ.get("CHANGE_FORK"):  # Jenkins multibranch: set for a change request from a fork
        return Trust(True, f"change request from fork {environ['CHANGE_FORK']}")
    return Trust(False, "not a pull or merge request from a fork")


def is_untrusted_change(environ: Mapping[str, str]) -> bool:
    return change_trust(environ).untrusted


def github_trust(event: str, payload: Mapping[str, Any] | None) -> Trust:
    """`payload` is the parsed event file, None when it is missing or unreadable."""
    pull_request_like = event in GITHUB_PULL_REQUEST_EVENTS or event in ("issue_comment", "workflow_run")
    if not pull_request_like:
        return Trust(False, f"{event} event")  # push, merge_group, schedule, workflow_dispatch, …
    if payload is None:
        return Trust(True, f"{event} event whose payload (GITHUB_EVENT_PATH) cannot be read: cannot tell its origin")
    if event == "issue_comment":
        issue = _mapping(payload, "issue")
        if not issue:
            return Trust(True, "issue_comment event without its issue: cannot tell whether it is a pull request")
        if issue.get("pull_request") is None:
            return Trust(False, "issue_comment event on an issue")
        # The payload names the pull request but not where its head comes from.
        return Trust(True, f"issue_comment event on pull request #{issue.get('number', '?')}: its head is not known")
    if event == "workflow_run":
        head = _mapping(_mapping(payload, "workflow_run"), "head_repository")
        base = _mapping(payload, "repository")
        return _compare(event, head, base)
    pull = _mapping(payload, "pull_request")
    return _compare(event, _mapping(_mapping(pull, "head"), "repo"), _mapping(_mapping(pull, "base"), "repo"))


def gitlab_trust(environ: Mapping[str, str]) -> Trust:
    source = environ.get("CI_PIPELINE_SOURCE", "")
    if source == "external_pull_request_event":
        head = environ.get("CI_EXTERNAL_PULL_REQUEST_SOURCE_REPOSITORY")
        base = environ.get("CI_EXTERNAL_PULL_REQUEST_TARGET_REPOSITORY")
        if not head or not base:
            return Trust(True, "external pull request pipeline without its source and target repositories")
        if head != base:
            return Trust(True, f"external pull request from {head}")
        return Trust(False, "external pull request from the same repository")
    if source != "merge_request_event" and not _gitlab_merge_request(environ):
        return Trust(False, f"{source or 'GitLab'} pipeline")
    head = environ.get("CI_MERGE_REQUEST_SOURCE_PROJECT_ID")
    base = environ.get("CI_MERGE_REQUEST_PROJECT_ID")
    if not head or not base:
        return Trust(True, "merge request pipeline without CI_MERGE_REQUEST_SOURCE_PROJECT_ID/PROJECT_ID")
    if head != base:
        path = environ.get("CI_MERGE_REQUEST_SOURCE_PROJECT_PATH") or f"project {head}"
        return Trust(True, f"merge request from fork {path}")
    return Trust(False, "merge request from the same project")


def check_direct_builder(trust: Trust, source: str) -> None:
    """An untrusted build may not name a builder: it is shared and warm, so whatever the build left
    there (layers, cache mounts) would be served to the next trusted build."""
    if trust.untrusted:
        raise InputError(
            f"this build is untrusted ({trust.reason}), so {source} is refused: a direct builder is shared and warm; "
            "build with --pool (an ephemeral builder, cache import only), or pass --trusted if the change is trusted"
        )


def _compare(event: str, head: Mapping[str, Any], base: Mapping[str, Any]) -> Trust:
    head_name, base_name = head.get("full_name"), base.get("full_name")
    if not head_name or not base_name:
        return Trust(True, f"{event} event without its head and base repositories: cannot tell its origin")
    if head_name != base_name:
        return Trust(True, f"{event} event from {head_name}, not {base_name}")
    if head.get("fork") is True:
        return Trust(True, f"{event} event from fork {head_name}")
    return Trust(False, f"{event} event from {head_name} itself")


def _read_event(path: str | None) -> Mapping[str, Any] | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _mapping(node: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = node.get(key) if isinstance(node, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _gitlab_merge_request(environ: Mapping[str, str]) -> bool:
    return any(
        environ.get(name)
        for name in ("CI_MERGE_REQUEST_IID", "CI_MERGE_REQUEST_ID", "CI_MERGE_REQUEST_SOURCE_PROJECT_ID")
    )
