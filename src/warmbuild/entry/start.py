"""The `warmbuild` executable: cancel signals are honoured from the process's first instruction.

`cli.main` turns SIGINT, SIGTERM and SIGHUP into `Cancelled` (signals.py), but only once the CLI's
modules are imported — a second or more on a loaded runner, during which a CI platform's cancel
would kill the process by the signal's default action: no error line, no exit code of ours. Found
by the soak (`bench/soak`), which signals clients at random moments. So the console script is this
module: it installs a handler first, then imports the CLI. Until `cli.main` replaces it, nothing
has been placed, started or written, so the handler only says so and exits 128 + the signal's
number, as the cancelled build would.
"""

from __future__ import annotations

import os
import signal
import sys

CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _cancelled_while_starting(signum, _frame) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"warmbuild: error: cancelled by {name} while starting; nothing was placed or built\n".encode())
    os._exit(128 + signum)


def main() -> int:
    for signum in CANCEL_SIGNALS:
        signal.signal(signum, _cancelled_while_starting)
    from ..cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
