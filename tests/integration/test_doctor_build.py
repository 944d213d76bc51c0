"""`warmbuild doctor --fix` and `warmbuild build --uv` against the real testbed.

The reference is examples/ml-app: its --fix rewrite (pip → uv with a cache mount, uv from the
package index) must build for real and install the same distributions, name==version, as the
original. Each variant gets an extra stage that exports `pip freeze --all` as a file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "ml-app"
FREEZE_STAGE = "RUN pip freeze --all > /freeze.txt\nFROM scratch\nCOPY --from=0 /freeze.txt /\n"


def _installed(app: Path, dockerfile: str, registry: str, builder: str, out: Path) -> list[str]:
    """Build DOCKERFILE + a freeze stage from scratch (fresh resolution) and return its pip freeze."""
    (app / f"{dockerfile}.freeze").write_text((app / dockerfile).read_text() + FREEZE_STAGE)
    done = subprocess.run(
        [
            os.environ.get("WARMBUILD_BUILDCTL", "buildctl"),
            "--addr",
            builder,
            "build",
            "--frontend",
            "dockerfile.v0",
            "--local",
            f"context={app}",
            "--local",
            f"dockerfile={app}",
            "--opt",
            f"filename={dockerfile}.freeze",
            "--opt",
            f"build-arg:REGISTRY={registry}",
            "--no-cache",
            "--output",
            f"type=local,dest={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return sorted(
        line.strip().lower().replace("_", "-") for line in (out / "freeze.txt").read_text().splitlines() if line.strip()
    )


def test_the_fixed_reference_builds_and_installs_the_same_versions(run_warmbuild, registry, builder, tmp_path):
    app = tmp_path / "ml-app"
    shutil.copytree(REFERENCE, app)
    done = run_warmbuild("doctor", str(app / "Dockerfile"), "--fix", "--output", str(app / "Dockerfile.fixed"))
    assert done.returncode == 0, done.stdout + done.stderr  # every warn finding was fixed
    fixed = (app / "Dockerfile.fixed").read_text()
    assert "uv pip install" in fixed and "uv==" in fixed and "--mount=type=cache,target=/root/.cache/uv" in fixed

    original = _installed(app, "Dockerfile", registry, builder, tmp_path / "original")
    rewritten = _installed(app, "Dockerfile.fixed", registry, builder, tmp_path / "fixed")
    assert rewritten == original
    pinned = [line.strip().lower() for line in (app / "requirements.txt").read_text().splitlines() if line.strip()]
    assert set(pinned) <= set(original)
    assert not any(line.startswith("uv==") for line in rewritten)  # uv stays out of the app's environment


def test_build_uv_end_to_end(run_warmbuild, registry, tmp_path):
    app = tmp_path / "ml-app"
    shutil.copytree(REFERENCE, app)
    result_file = tmp_path / "result.json"
    done = run_warmbuild(
        "build", str(app), "--build-arg", f"REGISTRY={registry}", "--uv", "--result-file", str(result_file)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--uv: building" in done.stderr
    result = json.loads(result_file.read_text())
    assert result["status"] == "success"
    assert any("uv pip install" in step["name"] for step in result["steps"])
    assert (app / "Dockerfile").read_text() == (REFERENCE / "Dockerfile").read_text()  # the original is untouched
