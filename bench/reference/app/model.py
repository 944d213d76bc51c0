"""The model behind the service: a transformers pipeline when its weights are present under
HF_HOME, else a small numpy baseline (so the image starts without downloading anything)."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

MODEL_NAME = os.environ.get("MODEL_NAME", "distilbert-base-uncased-finetuned-sst-2-english")
LABELS = ("NEGATIVE", "POSITIVE")


class BaselineModel:
    name = "baseline"

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        scores = np.array([min(len(t), 200) / 200 for t in texts], dtype=np.float64)
        probabilities = 1 / (1 + np.exp(-(scores - 0.5) * 4))
        return [(LABELS[int(p >= 0.5)], float(max(p, 1 - p))) for p in probabilities]


class TransformersModel:
    def __init__(self, name: str):
        from transformers import pipeline  # only in the full image

        self.name = name
        self._pipeline = pipeline("text-classification", model=name, local_files_only=True)

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        return [(r["label"], float(r["score"])) for r in self._pipeline(texts)]


@lru_cache(maxsize=1)
def load_model():
    try:
        return TransformersModel(MODEL_NAME)
    except Exception:  # no transformers in the image, or no local weights
        return BaselineModel()
