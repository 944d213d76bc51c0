"""What a failed solve means (buildkit.failures): the build's fault, a lost or broken builder (retried
elsewhere only before the image push began), the registry (retried on the same builder), a refusal."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from warmbuild.buildkit.failures import classify_failure, infrastructure_cause, push_started
from warmbuild.buildkit.progress import ProgressTracker, StepResult
from warmbuild.buildkit.run import SolveAbort
from warmbuild.errors import BuilderLost, BuildFailed, RegistryRefused, RegistryUnavailable
from warmbuild.pool.leases import LEASE_DELETED, builder_left

T = datetime(2026, 1, 1, tzinfo=timezone.utc)
TAGS = ("127.0.0.1:5000/app:1",)
EOF_LOST = "error: failed to solve: Unavailable: error reading from server: EOF"
REFUSED_LOST = (
    'error: failed to receive status: rpc error: code = Unavailable desc = connection error: desc = "transport: '
    'Error while dialing: dial tcp 127.0.0.11:1234: connect: connection refused"'
)


def step(name: str, error: str | None = None, started: bool = True) -> StepResult:
    return StepResult(1, "sha256:" + name.encode().hex()[:16], name, T if started else None, None, False, error)


def classify(failed=None, message="", *, log_tail=(), push=True, pushing=False):
    return classify_failure(failed, log_tail, message, 1, TAGS, push, pushing)


@pytest.mark.parametrize(
    "message", [EOF_LOST, REFUSED_LOST, "error: rpc error: code = Unavailable desc = transport is closing"]
)
def test_a_dropped_connection_to_buildkitd_is_a_lost_builder_retryable_before_the_push(message):
    lost = classify(message=message)
    assert isinstance(lost, BuilderLost) and lost.exit_code == 3
    assert lost.cause == "connection lost" and lost.retryable and lost.unhealthy


def test_a_connection_refused_that_is_not_grpcs_is_not_a_lost_builder():
    failed = classify(
        message="error: failed to solve: dial tcp 127.0.0.1:5000: connect: connection refused", push=False
    )
    assert type(failed) is BuildFailed


def test_a_builder_lost_after_the_push_began_is_not_retried_and_says_why():
    lost = classify(message=EOF_LOST, pushing=True)
    assert isinstance(lost, BuilderLost) and not lost.retryable and lost.push_started
    assert "not retried" in lost.message and "tag a second time" in lost.message
    assert "\n" not in lost.message


def test_a_full_disk_is_the_builders_fault_wherever_it_shows():
    in_snapshot = classify(step("[2/3] RUN pip install x", "failed to prepare sha256:ab: no space left on device"))
    in_the_log = classify(
        step(
            "[2/3] RUN dd if=/dev/zero of=/big", 'process "/bin/sh -c dd" did not complete successfully: exit code: 1'
        ),
        log_tail=("dd: error writing '/big': No space left on device",),
    )
    in_buildctl = classify(message="error: failed to solve: write /var/lib/buildkit/x: no space left on device")
    for lost in (in_snapshot, in_the_log, in_buildctl):
        assert isinstance(lost, BuilderLost) and lost.cause == "disk full" and lost.retryable


def test_a_snapshotter_error_counts_only_in_buildkits_own_words():
    assert infrastructure_cause("failed to commit snapshot extract-1: input/output error") == "snapshotter error"
    # A RUN step that printed the words itself is still the build's failure.
    failed = classify(
        step("[2/3] RUN ./check", 'process "/bin/sh -c ./check" did not complete successfully: exit code: 2'),
        log_tail=("snapshotter error: input/output error (as printed by the user's script)",),
    )
    assert isinstance(failed, BuildFailed) and failed.exit_code == 1


def test_a_failing_run_step_is_the_builds_fault():
    failed = classify(
        step("[2/3] RUN exit 3", 'process "/bin/sh -c exit 3" did not complete successfully: exit code: 3'),
        log_tail=("boom",),
    )
    assert isinstance(failed, BuildFailed) and not isinstance(failed, BuilderLost) and failed.log_tail == ("boom",)


def test_the_registry_failing_the_push_is_retried_on_the_same_builder_a_refusal_is_not():
    down = classify(step("exporting to image", "failed to push 127.0.0.1:5000/app:1: 503 Service Unavailable"))
    assert isinstance(down, RegistryUnavailable) and down.exit_code == 5
    gone = classify(step("exporting to image", "failed to do request: dial tcp 127.0.0.1:5000: connection refused"))
    assert isinstance(gone, RegistryUnavailable)
    refused = classify(step("exporting to image", "failed to push 127.0.0.1:5000/app:1: 401 Unauthorized"))
    assert type(refused) is RegistryRefused
    cache = classify(step("exporting cache to registry", "error writing manifest: 502 Bad Gateway"))
    assert isinstance(cache, RegistryUnavailable) and "cache export" in cache.message


def test_push_started_means_the_image_export_began_for_a_pushing_build():
    assert push_started([step("[1/2] FROM x"), step("exporting to image")], push=True)
    assert not push_started([step("[1/2] FROM x"), step("exporting to image", started=False)], push=True)
    assert not push_started([step("exporting to image")], push=False)  # nothing leaves the builder
    assert not push_started([step("exporting cache to registry")], push=True)


def test_the_progress_stream_decides_push_started():
    tracker = ProgressTracker()
    tracker.feed_line(
        '{"vertexes":[{"digest":"sha256:1","name":"[1/1] RUN sleep 30","started":"2026-01-01T00:00:00Z"}]}'
    )
    assert not push_started(tracker.steps(), push=True)
    tracker.feed_line(
        '{"vertexes":[{"digest":"sha256:2","name":"exporting to image","started":"2026-01-01T00:00:31Z"}]}'
    )
    assert push_started(tracker.steps(), push=True)


def test_a_lease_deleted_with_its_builder_stops_the_solve_as_a_lost_builder():
    abort = SolveAbort()
    reason = f"slot lease builders-0-slot-0 {LEASE_DELETED}"
    assert builder_left(reason) and not builder_left("slot lease builders-0-slot-0 is now held by someone")
    abort.trigger(reason, builder_left=builder_left(reason))
    abort.trigger("a second reason", builder_left=False)  # the first reason stands
    assert abort.reason == reason and abort.builder_left


def test_a_registry_away_while_the_from_image_resolves_is_the_registrys_not_the_builds():
    refused = 'failed to do request: Head "http://127.0.0.1:5000/v2/library/python/manifests/3.11-slim": dial tcp 127.0.0.1:5000: connect: connection refused'
    for name in (
        "[internal] load metadata for 127.0.0.1:5000/library/python:3.11-slim",
        "[stage-0 1/3] FROM 127.0.0.1:5000/library/python:3.11-slim@sha256:ab",
    ):
        failed = classify(step(name, refused))
        assert isinstance(failed, RegistryUnavailable) and failed.exit_code == 5 and "pull" in failed.message
    # A FROM that names no such image is the Dockerfile's fault.
    missing = classify(step("[internal] load metadata for 127.0.0.1:5000/nope:1", "127.0.0.1:5000/nope:1: not found"))
    assert type(missing) is BuildFailed


def test_the_snapshotters_directory_gone_under_the_daemon_is_the_builders_fault():
    text = (
        "failed to solve: failed to walk: resolve : lstat /var/lib/buildkit/runc-overlayfs: no such file or directory"
    )
    assert infrastructure_cause(text) == "snapshotter error"
    assert infrastructure_cause("failed to walk: lstat /src/app/missing.txt: no such file or directory") is None
