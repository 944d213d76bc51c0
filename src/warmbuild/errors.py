"""Errors a user can act on. Only `cli` turns them into exit codes.

Exit codes (documented in README and docs/architecture.md):
  1  the build itself failed (a RUN step exited non-zero, a Dockerfile error)
  2  bad input: flags, paths, tag or build-arg syntax
  3  the builder could not be reached, or was lost during the build (and could not be retried)
  4  a tool warmbuild needs is missing (buildctl)
  5  the registry refused the push or the pull, or kept failing it after retries
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


class BuilderLost(BuilderUnreachable):
    """The builder went away or broke under the build for a reason that is not the build's own:
    the connection was lost (buildkitd killed, pod deleted), it stopped answering, its disk is full,
    its snapshotter failed. `cause` is the short reason (for the result's attempts and the health
    mark); `push_started` says whether the image push may have begun, after which a retry could
    push the tag twice; `unhealthy` whether the builder should leave the rotation for a cool-down."""

    def __init__(self, message: str, cause: str, push_started: bool = False, unhealthy: bool = True):
        super().__init__(message)
        self.cause = cause
        self.push_started = push_started
        self.unhealthy = unhealthy

    @property
    def retryable(self) -> bool:
        """Safe to run the whole build again elsewhere: nothing can have been pushed yet."""
        return not self.push_started


class ToolMissing(WarmbuildError):
    exit_code = 4


class BuildFailed(WarmbuildError):
    exit_code = 1

    def __init__(self, message: str, log_tail: tuple[str, ...] = ()):
        super().__init__(message)
        self.log_tail = log_tail


class RegistryRefused(WarmbuildError):
    exit_code = 5


class RegistryUnavailable(RegistryRefused):
    """The push failed on the registry's side (connection refused or reset, a 5xx, a timeout, or two
    uploads of one blob colliding), not by a refusal: worth pushing again after a pause."""


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
