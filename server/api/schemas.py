"""OpenAPI documentation of the API: response models and request bodies.

Handlers parse raw requests themselves (precise 4xx messages, no double
decoding); these models describe the wire format for clients and for the
schema-driven fuzz test.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "ErrorBody",
    "ClassifyResponse",
    "ClassifyManyResponse",
    "error_responses",
    "CLASSIFY_OPENAPI",
    "INFER_OPENAPI",
]


class ErrorBody(BaseModel):
    error: str


class Prediction(BaseModel):
    index: int
    label: str
    score: float


class Timing(BaseModel):
    queue: float
    inference: float
    total: float


REASON = "why the policy chose this width: budget, load, pinned, no_budget, fallback, fixed, feedback"


class ClassifyResponse(BaseModel):
    model: str
    width: float = Field(description="the width that served the request")
    reason: str = Field(description=REASON)
    predictions: list[Prediction]
    timing_ms: Timing
    budget_ms: float | None
    deadline_met: bool


class ImageResult(BaseModel):
    width: float = Field(description="the width that served this image")
    reason: str = Field(description=REASON)
    predictions: list[Prediction]
    timing_ms: Timing
    deadline_met: bool


class TotalTiming(BaseModel):
    total: float


class ClassifyManyResponse(BaseModel):
    """The answer to several images (repeated multipart ``image`` fields, or JSON ``images``): one
    result per image, in the order sent; each image is batched as a request of its own with the
    request's budget."""

    model: str
    results: list[ImageResult]
    timing_ms: TotalTiming
    budget_ms: float | None
    deadline_met: bool = Field(description="every image was answered within the budget")


class V2Output(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any]
    outputs: list[V2Output]


_DESCRIPTIONS = {
    400: "malformed request", 401: "missing or invalid bearer token", 404: "unknown model or route",
    408: "request body not received in time",
    413: "body or image too large", 415: "unsupported media type", 422: "invalid value",
    500: "the batch failed on the device", 503: "overloaded, shutting down or not ready (see Retry-After)",
    504: "no width can meet the deadline",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


_BUDGET = {"name": "X-Latency-Budget-Ms", "in": "header", "required": False,
           "schema": {"type": "string"}, "description": "latency budget in milliseconds (positive number)"}
_WIDTH = {"name": "X-Width", "in": "header", "required": False, "schema": {"type": "string"},
          "description": "pin one of the model's declared widths"}

CLASSIFY_OPENAPI = {
    "parameters": [
        {"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "default": 5}},
        _BUDGET, _WIDTH,
    ],
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "one image, or several: repeat the field (answered as a list)"}}}},
            "application/json": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "description": "one base64 image (or a data: URL)"},
                "images": {"type": "array", "items": {"type": "string"},
                           "description": "several base64 images, answered as a list in order"}}}},
        },
    },
}

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "enum": ["FP32", "FP16", "UINT8"]},
        "data": {"type": "array", "items": {"type": "number"}},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
    },
}

INFER_OPENAPI = {
    "parameters": [_BUDGET, _WIDTH],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object", "properties": {
                        "width": {"type": "number"}, "latency_budget_ms": {"type": "number"},
                        "timeout": {"type": "integer"}, "binary_data_output": {"type": "boolean"}}},
                    "inputs": {"type": "array", "items": _TENSOR},
                    "outputs": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "parameters": {"type": "object"}}}},
                },
            }},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                         "description": "binary-data extension: JSON header + raw tensors"},
        },
    },
}
