"""Errors a user can act on. Only `cli` turns them into exit codes.

Exit codes (documented in README and docs/architecture.md):
  1  the build itself failed (a RUN step exited non-zero, a Dockerfile error)
  2  bad input: flags, paths, tag or build-arg syntax
  3  the builder could not be reached
  4  a tool warmbuild needs is missing (buildctl)
  5  the registry refused the push or the pull
  6  cluster access: credentials, permissions, pool state; the API server unreachable (placement
     retries that within --max-wait first)
  7  no slot could be had within the allowed wait
  8  the build's slot lease was taken over or lost (fencing): the build was aborted
  9  an ephemeral builder did not start (the pod's events are quoted)
  10 `warmbuild drain` timed out with slots still held
  130/143  cancelled by SIGINT / SIGTERM (128 + signal number)
"""

from __future__ import annotations


class WarmbuildError(Exception):
    """Root of every error warmbuild reports; `str(err)` is the one line shown to the user."""

    exit_code = 1

    def __init__(self, message: str):
        message = " ".join(message.splitlines())  # user input can carry line breaks; the line is one
        super().__init__(message)
        self.message = message


class InputError(WarmbuildError):
    exit_code = 2


class BuilderUnreachable(WarmbuildError):
    exit_code = 3


class ToolMissing(WarmbuildError):
    exit_code = 4


class BuildFailed(WarmbuildError):
    exit_code = 1

    def __init__(self, message: str, log_tail: tuple[str, ...] = ()):
        super().__init__(message)
        self.log_tail = log_tail


class RegistryRefused(WarmbuildError):
    exit_code = 5


class ClusterError(WarmbuildError):
    exit_code = 6


class ClusterUnavailable(ClusterError):
    """The API server did not answer (refused, reset, timed out) or answered 5xx/429: an outage that
    may end (a restart of kube-apiserver or etcd), not a refusal. Placement retries it within --max-wait."""


class ClusterRefused(ClusterError):
    """401 or an RBAC 403: the identity is not let in. Final, except right after an outage: a
    restarting API server answers requests before its authorizer's caches are filled, and refuses
    everything meanwhile, so placement gives a refusal that follows an outage a short grace."""


class NoSlotAvailable(WarmbuildError):
    exit_code = 7


class LeaseLost(WarmbuildError):
    exit_code = 8


class BuilderStartFailed(WarmbuildError):
    exit_code = 9


class DrainTimedOut(WarmbuildError):
    exit_code = 10


class Cancelled(WarmbuildError):
    def __init__(self, signal_number: int, signal_name: str):
        super().__init__(f"cancelled by {signal_name}")
        self.exit_code = 128 + signal_number
