"""`warmbuild build` in direct mode against the real testbed: buildkitd, buildctl, registry."""

import json
import socket
import threading
import time
import uuid

import pytest


def _build_args(app, registry, *extra):
    return ["build", str(app), "--build-arg", f"REGISTRY={registry}", *extra]


def test_pushed_digest_is_the_one_the_registry_serves(
    run_warmbuild, tiny_app, registry, unique_repo, registry_manifest, tmp_path
):
    tag = f"{unique_repo}:v1"
    result_file = tmp_path / "result.json"
    done = run_warmbuild(*_build_args(tiny_app, registry, "--tag", tag, "--push", "--result-file", str(result_file)))
    assert done.returncode == 0, done.stderr
    result = json.loads(result_file.read_text())
    assert result["status"] == "success"
    assert result["image"]["pushed"] is True
    stated, served = registry_manifest(tag)
    assert result["image"]["digest"] == stated == served
    timings = result["timings"]
    # Phases happen inside the build: none can be longer than the whole (cached steps count zero).
    assert timings["total_seconds"] >= max(
        timings["build_seconds"], timings["export_seconds"], timings["context_seconds"]
    )
    assert result["timings"]["push_seconds"] <= result["timings"]["export_seconds"]
    assert "sha256:" in done.stderr and "warmbuild: success" in done.stderr


def test_code_only_change_reuses_the_dependency_layer(run_warmbuild, tiny_app, registry, unique_repo, tmp_path):
    first = tmp_path / "first.json"
    second = tmp_path / "second.json"
    tag = f"{unique_repo}:dev"
    done = run_warmbuild(*_build_args(tiny_app, registry, "--tag", tag, "--push", "--result-file", str(first)))
    assert done.returncode == 0, done.stderr
    # Unique content: BuildKit caches by content, and an earlier run may have built any fixed edit.
    (tiny_app / "app.py").write_text(f'print("hello from the tiny app, edit {uuid.uuid4().hex}")\n')
    done = run_warmbuild(*_build_args(tiny_app, registry, "--tag", tag, "--push", "--result-file", str(second)))
    assert done.returncode == 0, done.stderr

    steps = {s["name"]: s for s in json.loads(second.read_text())["steps"]}
    pip_step = next(s for name, s in steps.items() if "RUN pip install" in name)
    copy_code = next(s for name, s in steps.items() if "COPY app.py" in name)
    assert pip_step["cached"] is True
    assert copy_code["cached"] is False
    result = json.loads(second.read_text())
    assert 0 < result["cache"]["cached_steps"] < result["cache"]["total_steps"]
    assert result["image"]["digest"] != json.loads(first.read_text())["image"]["digest"]


def test_failing_run_step_is_named_with_its_exit_status(run_warmbuild, tiny_app, registry, tmp_path):
    result_file = tmp_path / "result.json"
    done = run_warmbuild(
        *_build_args(
            tiny_app, registry, "--file", str(tiny_app / "Dockerfile.failing"), "--result-file", str(result_file)
        )
    )
    assert done.returncode == 1
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("warmbuild: error:")]
    assert len(error_lines) == 1
    assert "RUN echo" in error_lines[0] and "exit code: 3" in error_lines[0]
    assert "| model.bin is missing" in done.stderr  # the step's last log lines are shown
    result = json.loads(result_file.read_text())
    assert result["status"] == "failed" and result["exit_code"] == 1
    assert any(s["error"] and "exit code: 3" in s["error"] for s in result["steps"])


def test_unreachable_builder_fails_fast_with_one_clear_line(run_warmbuild, tiny_app, registry, tmp_path):
    started = time.monotonic()
    done = run_warmbuild(
        *_build_args(
            tiny_app, registry, "--builder", "tcp://127.0.0.99:1234", "--result-file", str(tmp_path / "r.json")
        )
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 3
    assert elapsed < 10
    assert "warmbuild: error: builder tcp://127.0.0.99:1234 is unreachable" in done.stderr


def test_a_listener_that_is_not_buildkitd_fails_within_seconds(run_warmbuild, tiny_app, registry, tmp_path):
    """Accepts TCP connections and never answers: the hang a misrouted address produces."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept_forever():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        done = run_warmbuild(
            *_build_args(
                tiny_app, registry, "--builder", f"tcp://127.0.0.1:{port}", "--result-file", str(tmp_path / "r.json")
            )
        )
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()
    assert done.returncode == 3, done.stderr
    assert elapsed < 10
    assert "did not answer as buildkitd" in done.stderr


def test_missing_buildctl_is_named(run_warmbuild, tiny_app, registry, tmp_path):
    done = run_warmbuild(
        *_build_args(tiny_app, registry, "--result-file", str(tmp_path / "r.json")),
        env={"WARMBUILD_BUILDCTL": str(tmp_path / "no-such-buildctl")},
    )
    assert done.returncode == 4
    assert "buildctl not found" in done.stderr


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--tag", "Bad Tag"], "invalid tag 'Bad Tag'"),
        (["--build-arg", "1X=y"], "invalid --build-arg '1X'"),
        (["--push"], "--push needs at least one --tag"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_warmbuild, tiny_app, registry, flags, fragment, tmp_path):
    done = run_warmbuild(*_build_args(tiny_app, registry, *flags, "--result-file", str(tmp_path / "r.json")))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"warmbuild: error: {done.stderr.split('error: ', 1)[1].strip()}"]
    assert fragment in done.stderr


def test_missing_context_and_dockerfile(run_warmbuild, tmp_path, registry):
    done = run_warmbuild("build", str(tmp_path / "nope"))
    assert done.returncode == 2 and "build context" in done.stderr
    (tmp_path / "ctx").mkdir()
    done = run_warmbuild("build", str(tmp_path / "ctx"))
    assert done.returncode == 2 and "Dockerfile" in done.stderr and "not found" in done.stderr
