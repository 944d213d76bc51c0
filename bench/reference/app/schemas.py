from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=64)


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]
