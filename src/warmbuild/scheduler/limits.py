"""Per-identity request limits: no caller can hold all of a replica's request threads.

Decision: a request counts against its identity (the TokenReview user name) while it runs; beyond
`limit` concurrent ones the next is answered 429 with Retry-After at once, before any API call.
Long requests (acquire long-polls, status) and short ones (renew, release) have a budget each, so
an identity's waiting acquirers — often every CI job, when one service account is the default
grant — never starve the renewals of its running builds. Counts are per replica (in memory): the
scheduler keeps no shared state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

RETRY_AFTER_SECONDS = 2


class TooManyRequests(Exception):
    def __init__(self, message: str, retry_after: int = RETRY_AFTER_SECONDS):
        super().__init__(message)
        self.retry_after = retry_after


class RequestLimiter:
    def __init__(self, limit: int):
        self.limit = limit
        self._running: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, identity: str, kind: str) -> Iterator[None]:
        """Count one request of `identity` of `kind` ("long" or "short") while the block runs."""
        key = (identity, kind)
        with self._lock:
            running = self._running.get(key, 0)
            if running >= self.limit:
                raise TooManyRequests(
                    f"{identity} has {running} requests running on this scheduler replica, the most one "
                    f"identity may (limits.concurrent_requests {self.limit}): retry after {RETRY_AFTER_SECONDS}s"
                )
            self._running[key] = running + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._running[key] - 1
                if left:
                    self._running[key] = left
                else:
                    del self._running[key]

    def running(self, identity: str, kind: str) -> int:
        with self._lock:
            return self._running.get((identity, kind), 0)
