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

import numpy as np
from starlette.concurrency import run_in_threadpool

from server.api.client import EngineClient
from server.api.codecs import V2_DATATYPES, parse_budget_ms, parse_width, v2_input_tensor, v2_samples
from server.api.outcomes import Recorder
from server.api.v2_request import V2InferRequest, V2RequestParameters
from server.engine import InferenceResult
from server.http.errors import ApiError
from server.metrics import width_label
from server.settings import Settings

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "MODEL_VERSION", "PLATFORM", "V2Answer", "find_model", "server_metadata",
           "model_metadata", "model_config", "model_statistics", "repository_index", "request_options", "infer",
    "server_version"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MODEL_VERSION = "1"
PLATFORM = "pytorch_slimmable"
EXTENSIONS = ("binary_tensor_data", "parameters", "model_configuration", "statistics", "model_repository")
# Triton's model-config data types of what the input accepts (the v2 datatype FP32 is TYPE_FP32, ...).
CONFIG_TYPES = {datatype: f"TYPE_{datatype}" for datatype in V2_DATATYPES}


def server_version() -> str:
    try:
        return version("widthwise")
    except PackageNotFoundError:
        return "0.0.0"


def find_model(engine: EngineClient, name: str, model_version: str | None = None) -> EngineClient:
    """The engine serving ``name`` (404 for another name or version)."""
    if name != engine.name:
        raise ApiError(404, f"unknown model {name!r}; this server serves {engine.name!r}")
    if model_version not in (None, "", MODEL_VERSION):
        raise ApiError(404, f"model {name!r} has no version {model_version!r}")
    return engine


def server_metadata() -> dict:
    return {"name": "widthwise", "version": server_version(), "extensions": list(EXTENSIONS)}


def model_metadata(engine: EngineClient) -> dict:
    """The v2 model metadata. The input is listed once per datatype the server accepts
    (FP32/FP16 normalised, UINT8 raw pixels), each under the same name: v2 metadata has one
    datatype per tensor, and a client picks the one it sends."""
    card = engine.card
    shape = [-1, card.input.channels, card.input.size, card.input.size]
    return {
        "name": engine.name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": datatype, "shape": shape} for datatype in V2_DATATYPES],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, card.num_classes]}],
        "parameters": {"widths": list(card.widths), "policy": engine.describe()["policy"]},
    }


def model_config(engine: EngineClient, settings: Settings) -> dict:
    """Triton's model configuration (the JSON form of ``model_config.proto``): batching, the input
    once per accepted datatype, the output, and widthwise's own settings as ``parameters``."""
    card, described = engine.card, engine.describe()
    dims = [card.input.channels, card.input.size, card.input.size]
    device = described["device"].split(":")[0] if described["device"] else settings.device
    parameters = {
        "widths": ",".join(width_label(w) for w in card.widths),
        "policy": described["policy"],
        "admission": settings.admission,
        "default_budget_ms": "" if settings.default_budget_ms is None else repr(settings.default_budget_ms),
        "latency_margin": repr(settings.latency_margin),
        "queue_limit": str(settings.queue_limit),
        "arch": card.arch,
    }
    return {
        "name": engine.name,
        "platform": PLATFORM,
        "backend": "widthwise",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": settings.max_batch_size,
        "input": [{"name": INPUT_NAME, "data_type": config_type, "format": "FORMAT_NCHW", "dims": dims}
                  for config_type in CONFIG_TYPES.values()],
        "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [card.num_classes]}],
        "dynamic_batching": {"max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1e3)},
        "instance_group": [{"name": engine.name, "kind": "KIND_GPU" if device == "cuda" else "KIND_CPU",
                            "count": 1}],
        "parameters": {key: {"string_value": value} for key, value in parameters.items()},
    }


def model_statistics(engine: EngineClient) -> dict:
    """Triton's statistics response for the one model (see :mod:`server.statistics`)."""
    entry = engine.statistics().as_triton(engine.name, MODEL_VERSION, engine.card.widths)
    return {"model_stats": [entry]}


def repository_index(engine: EngineClient, ready_only: bool = False) -> list[dict]:
    """Triton's repository index: the one model, ``READY`` or ``UNAVAILABLE`` with the reason."""
    ready = engine.ready
    if ready_only and not ready:
        return []
    reason = "" if ready else (engine.failure or f"model is {engine.state.value}")
    return [{"name": engine.name, "version": MODEL_VERSION, "state": "READY" if ready else "UNAVAILABLE",
             "reason": reason}]


def check_outputs(request: V2InferRequest) -> None:
    """Unknown requested outputs are refused before the model runs."""
    for out in request.outputs or ():
        if out.name != OUTPUT_NAME:
            raise ApiError(400, f"unknown output {out.name!r}; this model outputs {OUTPUT_NAME!r}")


def request_options(params: V2RequestParameters | None, engine: EngineClient, width_fallback: str | None,
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
    input_s: float  # first byte until queued (receiving, parsing, building the tensor)

    def parameters(self) -> dict:
        """The response parameters: the served width, why the policy chose it, and the deadline."""
        return {"width": self.result.width, "reason": str(self.result.reason), "deadline_met": self.deadline_met,
                "budget_ms": self.budget_ms}


async def infer(engine: EngineClient, request: V2InferRequest, tail: bytes | memoryview, *, width: float | None,
                budget_ms: float | None, arrival: float, record: Recorder, offload: bool = False) -> V2Answer:
    """Admit, build the input tensor (in a worker thread when ``offload``: large JSON data) and run it.

    ``record`` is :func:`~server.observe.count_outcome`'s; ``arrival`` is when the server saw the request.
    """
    check_outputs(request)
    admission = engine.admit(width, budget_ms, arrival=arrival, samples=v2_samples(request))
    spec = engine.card.input
    tensor = await run_in_threadpool(v2_input_tensor, request, tail, spec) if offload else \
        v2_input_tensor(request, tail, spec)
    input_s = time.monotonic() - arrival
    result = await engine.infer(admission, tensor)
    total = time.monotonic() - arrival
    met = record(admission, result, total, input_s)
    logits = np.ascontiguousarray(result.logits, dtype=np.float32)
    return V2Answer(logits, result, budget_ms, met, total, input_s)
