"""Request statistics kept in a pandas frame, served at /stats."""

from __future__ import annotations

import threading

import pandas as pd

_lock = threading.Lock()
_rows: list[dict] = []


def record(texts: list[str], labels: list[str]) -> None:
    with _lock:
        _rows.extend({"length": len(t), "label": label} for t, label in zip(texts, labels))
        del _rows[:-10_000]


def summary() -> dict:
    with _lock:
        frame = pd.DataFrame(_rows, columns=["length", "label"])
    if frame.empty:
        return {"requests": 0}
    return {
        "requests": int(len(frame)),
        "mean_length": float(frame["length"].mean()),
        "labels": {str(k): int(v) for k, v in frame["label"].value_counts().items()},
    }
