from fastapi import FastAPI

from . import features
from .model import load_model
from .schemas import Prediction, PredictRequest, PredictResponse

app = FastAPI(title="reference ML service")


@app.get("/healthz")
def healthz() -> dict:
    return {"ok": True}


@app.post("/predict", response_model=PredictResponse)
def predict(request: PredictRequest) -> PredictResponse:
    model = load_model()
    results = model.predict(request.texts)
    features.record(request.texts, [label for label, _ in results])
    return PredictResponse(model=model.name, predictions=[Prediction(label=l, score=s) for l, s in results])


@app.get("/stats")
def stats() -> dict:
    return features.summary()
