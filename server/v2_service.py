"""The KServe v2 model service, protocol-neutral: what the HTTP routes (``routers/kserve.py``) and
the gRPC servicer (``grpc_service.py``) share, so both answer the same way.

A request arrives as a validated :class:`~server.v2_request.V2InferRequest` plus the bytes of its
binary tensors; :func:`infer` admits it, builds the input tensor and waits for the engine; each
protocol encodes the :class:`V2Answer` its own way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import numpy as np
from starlette.concurrency import run_in_threadpool

from .codecs import V2_DATATYPES, parse_budget_ms, parse_width, v2_input_tensor, v2_samples
from .engine import Engine, InferenceResult
from .errors import ApiError
from .v2_request import V2InferRequest, V2RequestParameters

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "MODEL_VERSION", "PLATFORM", "V2Answer", "find_model", "server_metadata",
           "model_metadata", "request_options", "infer", "server_version"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MODEL_VERSION = "1"
PLATFORM = "pytorch_slimmable"
EXTENSIONS = ("binary_tensor_data", "parameters")


def server_version() -> str:
    try:
        return version("widthwise")
    except PackageNotFoundError:
        return "0.0.0"


def find_model(engine: Engine, name: str, model_version: str | None = None) -> Engine:
    """The engine serving ``name`` (404 for another name or version)."""
    if name != engine.model_name:
        raise ApiError(404, f"unknown model {name!r}; this server serves {engine.model_name!r}")
    if model_version not in (None, "", MODEL_VERSION):
        raise ApiError(404, f"model {name!r} has no version {model_version!r}")
    return engine


def server_metadata() -> dict:
    return {"name": "widthwise", "version": server_version(), "extensions": list(EXTENSIONS)}


def model_metadata(engine: Engine) -> dict:
    """The v2 model metadata. The input is listed once per datatype the server accepts
    (FP32/FP16 normalised, UINT8 raw pixels), each under the same name: v2 metadata has one
    datatype per tensor, and a client picks the one it sends."""
    card = engine.card
    shape = [-1, card.input.channels, card.input.size, card.input.size]
    return {
        "name": engine.model_name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": datatype, "shape": shape} for datatype in V2_DATATYPES],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, card.num_classes]}],
        "parameters": {"widths": list(card.widths), "policy": engine.policy.name},
    }


def check_outputs(request: V2InferRequest) -> None:
    """Unknown requested outputs are refused before the model runs."""
    for out in request.outputs or ():
        if out.name != OUTPUT_NAME:
            raise ApiError(400, f"unknown output {out.name!r}; this model outputs {OUTPUT_NAME!r}")


def request_options(params: V2RequestParameters | None, engine: Engine, width_fallback: str | None,
                    budget_fallback_ms: float | None) -> tuple[float | None, float | None]:
    """The pinned width and the budget in ms: request parameters first (``width``,
    ``latency_budget_ms``, Triton's ``timeout`` in microseconds), then the protocol's own
    (HTTP headers, the gRPC deadline)."""
    params = params or V2RequestParameters()
    width = parse_width(params.width if params.width is not None else width_fallback, engine.card.widths, "width")
    if params.latency_budget_ms is not None:
        budget_ms = parse_budget_ms(params.latency_budget_ms, "latency_budget_ms")
    elif params.timeout is not None:
        timeout_us = parse_budget_ms(params.timeout, "timeout")
        budget_ms = timeout_us / 1e3 if timeout_us is not None else budget_fallback_ms
    else:
        budget_ms = budget_fallback_ms
    return width, budget_ms


@dataclass(frozen=True)
class V2Answer:
    """The engine's answer to one v2 request."""

    logits: np.ndarray  # float32 [N, num_classes], C-contiguous
    result: InferenceResult
    budget_ms: float | None
    deadline_met: bool
    total_s: float

    def parameters(self) -> dict:
        """The response parameters: the served width, why the policy chose it, and the deadline."""
        return {"width": self.result.width, "reason": str(self.result.reason), "deadline_met": self.deadline_met,
                "budget_ms": self.budget_ms}


async def infer(engine: Engine, request: V2InferRequest, tail: bytes | memoryview, *, width: float | None,
                budget_ms: float | None, arrival: float, record: Callable[[InferenceResult, float, float | None], bool],
                offload: bool = False) -> V2Answer:
    """Admit, build the input tensor (in a worker thread when ``offload``: large JSON data) and run it.

    ``record`` is :func:`~server.observe.count_outcome`'s; ``arrival`` is when the server saw the request.
    """
    check_outputs(request)
    admission = engine.admit(width, budget_ms, arrival=arrival, samples=v2_samples(request))
    spec = engine.card.input
    tensor = await run_in_threadpool(v2_input_tensor, request, tail, spec) if offload else \
        v2_input_tensor(request, tail, spec)
    result = await engine.infer(admission, tensor)
    total = time.monotonic() - arrival
    met = record(result, total, admission.budget_s)
    logits = np.ascontiguousarray(result.logits.float().numpy())
    return V2Answer(logits, result, budget_ms, met, total)
