"""Parse BuildKit's JSON progress stream (`buildctl --progress=rawjson`), pure logic.

Each line of the stream is one `SolveStatus` object: `vertexes`, `statuses`, `logs`, `warnings`.
A vertex (one step of the build graph) arrives many times: first when it starts, again when it
is found cached, completes or fails. Updates can arrive out of order and repeat, so every field
is merged: earliest start, latest completion, cached once seen, first error kept.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import deque
from dataclasses import dataclass
from datetime import datetime

LOG_LINES_KEPT = 200
ANNOUNCED_STATUS_PREFIXES = ("pushing", "exporting", "writing", "preparing", "sending")


@dataclass(frozen=True)
class StepResult:
    number: int  # order of first appearance, as buildctl's plain progress numbers steps
    digest: str
    name: str
    started: datetime | None
    completed: datetime | None
    cached: bool
    error: str | None

    @property
    def duration_seconds(self) -> float:
        """Time this build spent on the step: none when it was cached (BuildKit may then report
        the timestamps of the build that first ran it)."""
        if self.cached or self.started is None or self.completed is None:
            return 0.0
        return max(0.0, (self.completed - self.started).total_seconds())


@dataclass(frozen=True)
class SubStatus:
    """A progress item inside a step, such as 'pushing layers' inside 'exporting to image'."""

    vertex: str
    id: str
    started: datetime | None
    completed: datetime | None


@dataclass(frozen=True)
class CacheStats:
    """Counted the way BuildKit's build history does: distinct vertices, cached once seen."""

    cached_steps: int
    total_steps: int

    @property
    def ratio(self) -> float:
        return self.cached_steps / self.total_steps if self.total_steps else 0.0


def parse_timestamp(value: str | None) -> datetime | None:
    """RFC 3339 with up to nanosecond precision, as Go encodes time.Time."""
    if not value:
        return None
    if value.startswith("0001-01-01"):
        return None
    text = value.replace("Z", "+00:00")
    # Python keeps microseconds: cut a longer fraction to six digits.
    if "." in text:
        head, rest = text.split(".", 1)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)].ljust(6, '0')}{rest[digits:]}"
    return datetime.fromisoformat(text)


class _Vertex:
    __slots__ = ("number", "digest", "name", "started", "completed", "cached", "error", "logs", "partial")

    def __init__(self, number: int, digest: str):
        self.number = number
        self.digest = digest
        self.name = ""
        self.started: datetime | None = None
        self.completed: datetime | None = None
        self.cached = False
        self.error: str | None = None
        self.logs: deque[str] = deque(maxlen=LOG_LINES_KEPT)
        self.partial = ""  # a log line not yet ended by a newline


class ProgressTracker:
    """Accumulates the stream into steps and yields one plain line per event for CI logs."""

    def __init__(self) -> None:
        self._vertices: dict[str, _Vertex] = {}
        self._statuses: dict[tuple[str, str], SubStatus] = {}
        self.warnings: list[str] = []
        self.unparsed: list[str] = []  # lines that were not JSON: buildctl's own messages

    def feed_line(self, line: str) -> list[str]:
        """Take one line of buildctl's stderr; return the plain progress lines it produces."""
        text = line.strip()
        if not text:
            return []
        if not text.startswith("{"):
            self.unparsed.append(text)
            return [text]
        try:
            status = json.loads(text)
        except json.JSONDecodeError:
            self.unparsed.append(text)
            return [text]
        return self.feed_status(status)

    def feed_status(self, status: dict) -> list[str]:
        # Starts first and ends last, so one update reads in order: step, its output, DONE.
        lines: list[str] = []
        endings: list[str] = []
        for raw in status.get("vertexes") or ():
            started, ended = self._merge_vertex(raw)
            lines.extend(started)
            endings.extend(ended)
        for raw in status.get("statuses") or ():
            lines.extend(self._merge_status(raw))
        for raw in status.get("logs") or ():
            lines.extend(self._append_log(raw))
        lines.extend(endings)
        for raw in status.get("warnings") or ():
            short = _decode_bytes(raw.get("short"))
            if short:
                self.warnings.append(short.strip())
                lines.append(f"WARNING: {short.strip()}")
        return lines

    def _vertex(self, digest: str) -> _Vertex:
        vertex = self._vertices.get(digest)
        if vertex is None:
            vertex = _Vertex(len(self._vertices) + 1, digest)
            self._vertices[digest] = vertex
        return vertex

    def _merge_vertex(self, raw: dict) -> tuple[list[str], list[str]]:
        digest = raw.get("digest")
        if not digest:
            return [], []
        vertex = self._vertex(digest)
        lines: list[str] = []
        endings: list[str] = []
        if raw.get("name") and not vertex.name:
            vertex.name = raw["name"]
        started = parse_timestamp(raw.get("started"))
        if started is not None and (vertex.started is None or started < vertex.started):
            if vertex.started is None:
                lines.append(f"#{vertex.number} {vertex.name}")
            vertex.started = started
        if raw.get("cached") and not vertex.cached:
            vertex.cached = True
            endings.append(f"#{vertex.number} CACHED")
        error = raw.get("error")
        if error and vertex.error is None:
            vertex.error = error
            endings.append(f"#{vertex.number} ERROR: {error}")
        completed = parse_timestamp(raw.get("completed"))
        if completed is not None and (vertex.completed is None or completed > vertex.completed):
            first = vertex.completed is None
            vertex.completed = completed
            if first and not error and not vertex.cached:
                endings.append(f"#{vertex.number} DONE {self._seconds(vertex):.1f}s")
        return lines, endings

    def _merge_status(self, raw: dict) -> list[str]:
        vertex_digest = raw.get("vertex") or ""
        status_id = raw.get("id") or ""
        key = (vertex_digest, status_id)
        previous = self._statuses.get(key)
        started = parse_timestamp(raw.get("started"))
        completed = parse_timestamp(raw.get("completed"))
        if previous is not None:
            if previous.started is not None and (started is None or previous.started < started):
                started = previous.started
            if previous.completed is not None and (completed is None or previous.completed > completed):
                completed = previous.completed
        self._statuses[key] = SubStatus(vertex_digest, status_id, started, completed)
        if vertex_digest not in self._vertices:
            return []
        number = self._vertices[vertex_digest].number
        lines = []
        # Announce the phases a CI log reader waits on (pushing, exporting) when they begin.
        if previous is None and completed is None and status_id.startswith(ANNOUNCED_STATUS_PREFIXES):
            lines.append(f"#{number} {status_id}")
        if completed is not None and (previous is None or previous.completed is None):
            seconds = (completed - started).total_seconds() if started else 0.0
            lines.append(f"#{number} {status_id} {seconds:.1f}s done")
        return lines

    def _append_log(self, raw: dict) -> list[str]:
        digest = raw.get("vertex")
        if not digest:
            return []
        vertex = self._vertex(digest)
        text = vertex.partial + _decode_bytes(raw.get("data"))
        *complete, vertex.partial = text.split("\n")
        lines = []
        for log_line in complete:
            log_line = log_line.rstrip("\r")
            vertex.logs.append(log_line)
            lines.append(f"#{vertex.number} {log_line}")
        return lines

    @staticmethod
    def _seconds(vertex: _Vertex) -> float:
        if vertex.started is None or vertex.completed is None:
            return 0.0
        return max(0.0, (vertex.completed - vertex.started).total_seconds())

    def steps(self) -> tuple[StepResult, ...]:
        return tuple(
            StepResult(v.number, v.digest, v.name, v.started, v.completed, v.cached, v.error)
            for v in sorted(self._vertices.values(), key=lambda v: v.number)
        )

    def sub_statuses(self) -> tuple[SubStatus, ...]:
        return tuple(self._statuses.values())

    def cache_stats(self) -> CacheStats:
        vertices = self._vertices.values()
        return CacheStats(
            cached_steps=sum(1 for v in vertices if v.cached and v.name),
            total_steps=sum(1 for v in vertices if v.name),
        )

    def log_tail(self, digest: str, lines: int = 20) -> tuple[str, ...]:
        vertex = self._vertices.get(digest)
        if vertex is None:
            return ()
        tail = list(vertex.logs)
        if vertex.partial:
            tail.append(vertex.partial)
        return tuple(tail[-lines:])

    def failed_step(self) -> StepResult | None:
        """The step that failed first, ignoring steps that were only cancelled because of it."""
        failed = [s for s in self.steps() if s.error and not _is_cancellation(s.error)]
        if not failed:
            failed = [s for s in self.steps() if s.error]
        if not failed:
            return None
        return min(failed, key=lambda s: s.number)


def _is_cancellation(error: str) -> bool:
    return "context canceled" in error or "context cancelled" in error


def _decode_bytes(value) -> str:
    """Go encodes []byte as base64 in JSON."""
    if not value:
        return ""
    if isinstance(value, list):
        return "".join(_decode_bytes(v) for v in value)
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return str(value)
