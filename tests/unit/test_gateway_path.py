"""The client's side of a build through the gateway: no separate TCP probe (`debug workers` is the
check), and a failed check names the builder and the gateway in one line."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest

from warmbuild import pipeline
from warmbuild.buildkit.run import check_buildkit_answers
from warmbuild.config import BuilderEndpoint, TlsFiles, build_request
from warmbuild.errors import BuilderLost
from warmbuild.report import Placement

GATEWAY = BuilderEndpoint(
    address="tcp://127.0.0.1:8443",
    tls=TlsFiles(server_name="warmbuild-builder-0.builders.warmbuild.internal"),
    via_gateway=True,
)


def fake_buildctl(tmp_path: Path, stderr: str) -> str:
    path = tmp_path / "buildctl"
    path.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit 1\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_failed_check_through_the_gateway_names_builder_and_gateway(tmp_path):
    buildctl = fake_buildctl(tmp_path, "error: connection refused")
    with pytest.raises(BuilderLost) as caught:
        check_buildkit_answers(buildctl, GATEWAY)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "builder warmbuild-builder-0.builders.warmbuild.internal through the gateway tcp://127.0.0.1:8443"
    )
    assert "connection refused" in message


def test_a_direct_builder_keeps_its_message(tmp_path):
    buildctl = fake_buildctl(tmp_path, "error: connection refused")
    with pytest.raises(BuilderLost, match=r"^builder tcp://127.0.0.1:1234 did not answer as buildkitd"):
        check_buildkit_answers(buildctl, BuilderEndpoint(address="tcp://127.0.0.1:1234"))


@pytest.mark.parametrize(("endpoint", "probed"), [(GATEWAY, False), (BuilderEndpoint("tcp://127.0.0.1:1234"), True)])
def test_only_a_direct_builder_gets_the_tcp_probe(tmp_path, monkeypatch, endpoint, probed):
    calls: list[str] = []
    monkeypatch.setattr(pipeline, "find_buildctl", lambda _path: "buildctl")
    monkeypatch.setattr(pipeline, "check_reachable", lambda _builder: calls.append("tcp"))
    monkeypatch.setattr(pipeline, "check_buildkit_answers", lambda _path, _builder: calls.append("workers"))

    def run_solve(*_args, **_kwargs):
        calls.append("solve")
        raise BuilderLost("stop here", cause="connection lost")

    monkeypatch.setattr(pipeline, "run_solve", run_solve)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    request = build_request(context=str(tmp_path), tags=["r/app:1"], result_file=str(tmp_path / "r.json"), environ={})
    with pytest.raises(BuilderLost):
        pipeline.run_build(request, endpoint, Placement(builder="b", path="direct"), log=io.StringIO(), environ={})
    assert calls == (["tcp", "workers", "solve"] if probed else ["workers", "solve"])
