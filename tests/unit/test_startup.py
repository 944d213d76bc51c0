"""Every CI step pays warmbuild's start-up: the build path must not load what only other commands need."""

from __future__ import annotations

import json
import subprocess
import sys

NOT_ON_THE_BUILD_PATH = (
    "kubernetes",  # the official client: ~0.25 s to import; cluster.py speaks raw JSON over urllib3
    "dockerfile",  # BuildKit's parser (native): doctor and --uv only
    "warmbuild.doctor.diagnosis",
    "warmbuild.simulate.engine",  # simulate / plan only
    "warmbuild.scheduler.client",  # --scheduler only
    "fastapi",
    "matplotlib",
    "cryptography",  # ephemeral builders' per-run certificates only
)


def test_the_cli_starts_without_the_modules_only_other_commands_need():
    code = "import sys, json, warmbuild.cli; print(json.dumps(sorted(sys.modules)))"
    loaded = set(
        json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    )
    assert not [name for name in NOT_ON_THE_BUILD_PATH if name in loaded]
