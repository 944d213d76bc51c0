"""The `warmbuild` executable honours a cancel signal that arrives before the CLI is imported."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

EARLY = """
import os, signal, time
from warmbuild.entry import start
for signum in start.CANCEL_SIGNALS:
    signal.signal(signum, start._cancelled_while_starting)
os.kill(os.getpid(), signal.{name})
time.sleep(10)
print("not reached")
"""


def test_a_signal_while_starting_is_one_line_and_128_plus_the_signal():
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        done = subprocess.run(
            [sys.executable, "-c", EARLY.format(name=name)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 128 + signal.Signals[name].value
        assert done.stderr == f"warmbuild: error: cancelled by {name} while starting; nothing was placed or built\n"
        assert "not reached" not in done.stdout


def test_the_console_script_is_the_early_entry_and_reaches_the_cli():
    assert 'warmbuild = "warmbuild.entry.start:main"' in (ROOT / "pyproject.toml").read_text()
    done = subprocess.run(
        [sys.executable, "-m", "warmbuild.entry.start", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("0.1.0"), done
