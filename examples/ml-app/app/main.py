"""A tiny inference-shaped service: the part of an ML image that changes on every commit."""

import numpy as np
from fastapi import FastAPI

app = FastAPI()
WEIGHTS = np.array([0.4, 0.3, 0.3])


@app.get("/healthz")
def healthz() -> dict:
    return {"ok": True}


@app.post("/predict")
def predict(features: list[float]) -> dict:
    score = float(np.dot(WEIGHTS[: len(features)], features[: len(WEIGHTS)]))
    return {"score": score}
