"""Cancellation by signal: SIGINT, SIGTERM and SIGHUP become `Cancelled`, except during cleanup.

CI platforms stop a job with a sequence of signals (GitHub: SIGINT, then SIGTERM 7.5 s later;
Jenkins and GitLab: SIGTERM, then SIGKILL). The first signal cancels the build. A later one must
not cut the cleanup that the first one started (giving the slot back, writing the result), so
cleanup runs inside `signals_deferred()`: a signal that arrives there is remembered and raised as
`Cancelled` once the cleanup has finished.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Cancelled

CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_depth = 0
_pending: list[int] = []
_saved: dict[int, object] = {}


def raise_cancelled(signum, _frame=None):
    raise Cancelled(signum, signal.Signals(signum).name)


def install_cancel_handlers() -> None:
    """From now on a cancel signal raises `Cancelled` in the main thread."""
    for signum in CANCEL_SIGNALS:
        signal.signal(signum, raise_cancelled)


def _remember(signum, _frame):
    _pending.append(signum)


def signal_pending() -> bool:
    """A cancel signal arrived inside `signals_deferred()` and waits for the block to end."""
    return bool(_pending)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block to its end; a cancel signal received meanwhile is raised after it.

    Nested blocks defer to the outermost one. If the block itself raises, that exception wins and
    the deferred signal is dropped (the build is already ending with an error or a cancel).
    Outside the main thread signals cannot be handled here, and the block just runs.
    """
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _pending.clear()
        for signum in CANCEL_SIGNALS:
            _saved[signum] = signal.signal(signum, _remember)
    _depth += 1
    failed = True
    try:
        yield
        failed = False
    finally:
        _depth -= 1
        if _depth == 0:
            for signum, handler in _saved.items():
                signal.signal(signum, handler)
            _saved.clear()
            pending = list(_pending)
            _pending.clear()
            if pending and not failed:
                raise_cancelled(pending[0])
