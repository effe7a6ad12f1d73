"""KServe v2 / Open Inference Protocol, with Triton's binary-data extension.

Input: one tensor ``[N, C, H, W]`` (FP32/FP16: already normalised; UINT8:
raw pixels, normalised here with the checkpoint's mean/std). Output:
``logits`` ``[N, num_classes]`` FP32, as JSON or binary.
Width and budget: request ``parameters`` (``width``, ``latency_budget_ms``,
Triton's ``timeout`` in microseconds) or the ``X-Width`` /
``X-Latency-Budget-Ms`` headers.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from models.transforms import normalize_pixels

from ..codecs import decode_v2_tensor, parse_budget_ms, parse_width, split_binary_body
from ..engine import Engine
from ..errors import ApiError
from ..http_util import get_engine, read_body_aligned, timing_headers
from ..logs import log_fields
from ..observe import count_outcome
from ..schemas import INFER_OPENAPI, V2InferResponse, error_responses
from ..v2_request import V2InferRequest, V2RequestParameters, parse_v2_request

router = APIRouter(tags=["kserve-v2"])

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MODEL_VERSION = "1"
INLINE_PARSE_BYTES = 64 * 1024  # larger bodies are parsed in a worker thread


def _server_version() -> str:
    try:
        return version("widthwise")
    except PackageNotFoundError:
        return "0.0.0"


def _model(request: Request, name: str, model_version: str | None = None) -> Engine:
    engine = get_engine(request)
    if name != engine.model_name:
        raise ApiError(404, f"unknown model {name!r}; this server serves {engine.model_name!r}")
    if model_version not in (None, "", MODEL_VERSION):
        raise ApiError(404, f"model {name!r} has no version {model_version!r}")
    return engine


@router.get("/v2")
async def server_metadata() -> dict:
    return {"name": "widthwise", "version": _server_version(), "extensions": ["binary_tensor_data", "parameters"]}


EMPTY = {"content": {}}  # Triton answers health and readiness with an empty body


@router.get("/v2/health/live", response_class=Response, responses={200: {"description": "live", **EMPTY}})
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", response_class=Response,
            responses={200: {"description": "ready", **EMPTY}, 503: {"description": "not ready", **EMPTY}})
async def ready(request: Request) -> Response:
    return Response(status_code=200 if get_engine(request).ready else 503)


@router.get("/v2/models/{name}", responses=error_responses(401, 404))
@router.get("/v2/models/{name}/versions/{model_version}", responses=error_responses(401, 404))
async def model_metadata(request: Request, name: str, model_version: str | None = None) -> dict:
    engine = _model(request, name, model_version)
    c, s = engine.card.input.channels, engine.card.input.size
    return {
        "name": engine.model_name,
        "versions": [MODEL_VERSION],
        "platform": "pytorch_slimmable",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, c, s, s]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, engine.card.num_classes]}],
        "parameters": {"widths": list(engine.card.widths)},
    }


_READY = {"response_class": Response,
          "responses": {200: {"description": "ready", **EMPTY}, 503: {"description": "not ready", **EMPTY},
                        **error_responses(401, 404)}}


@router.get("/v2/models/{name}/ready", **_READY)
@router.get("/v2/models/{name}/versions/{model_version}/ready", **_READY)
async def model_ready(request: Request, name: str, model_version: str | None = None) -> Response:
    engine = _model(request, name, model_version)
    return Response(status_code=200 if engine.ready else 503)


_INFER = {"response_model": V2InferResponse, "openapi_extra": INFER_OPENAPI,
          "responses": error_responses(400, 401, 404, 408, 413, 422, 500, 503, 504)}


@router.post("/v2/models/{name}/infer", **_INFER)
@router.post("/v2/models/{name}/versions/{model_version}/infer", **_INFER)
async def infer(request: Request, name: str, model_version: str | None = None) -> Response:
    started = time.monotonic()
    engine = _model(request, name, model_version)
    settings = request.app.state.settings
    async with count_outcome(engine, request) as record:
        header_length = request.headers.get("inference-header-content-length")
        body = await read_body_aligned(request, settings.max_body_bytes, _int_or_zero(header_length))
        # Parsing megabytes of JSON takes 100+ ms: never on the event loop. Binary tensors after a small
        # JSON header are cheap to use (a view of the body) and stay inline: two thread hand-offs cost
        # ~0.6 ms per request here (bench.overhead_ab).
        json_bytes = _int_or_zero(header_length) if header_length is not None else len(body)
        large = json_bytes > INLINE_PARSE_BYTES
        header, tail = await run_in_threadpool(split_binary_body, body, header_length) if large else \
            split_binary_body(body, header_length)
        parsed = parse_v2_request(header)
        _check_outputs(parsed)
        params = parsed.parameters or V2RequestParameters()
        width = parse_width(params.width if params.width is not None else request.headers.get("x-width"),
                            engine.card.widths, "width")
        budget_ms = _budget_ms(params, request)
        log_fields(request, budget_ms=budget_ms, pinned_width=width)
        admission = engine.admit(width, budget_ms, arrival=started)
        tensor = await run_in_threadpool(input_tensor, parsed, tail, engine) if large else \
            input_tensor(parsed, tail, engine)
        if tensor.shape[0] > settings.max_batch_size:
            raise ApiError(400, f"batch of {tensor.shape[0]} exceeds max_batch_size {settings.max_batch_size}")
        result = await engine.infer(admission, tensor)
        total = time.monotonic() - started
        met = record(result, total, admission.budget_s)
        logits = np.ascontiguousarray(result.logits.float().numpy())
        output = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(logits.shape)}
        response = {
            "model_name": engine.model_name,
            "model_version": MODEL_VERSION,
            "parameters": {"width": result.width, "deadline_met": met, "budget_ms": budget_ms},
            "outputs": [output],
        }
        if parsed.id is not None:
            response["id"] = parsed.id
        headers = timing_headers(result, total)
        if not parsed.wants_binary_output():
            output["data"] = logits.ravel().tolist()
            return JSONResponse(response, headers=headers)
        raw = logits.astype("<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps(response).encode()
        headers["Inference-Header-Content-Length"] = str(len(head))
        return Response(head + raw, media_type="application/octet-stream", headers=headers)


def _budget_ms(params: V2RequestParameters, request: Request) -> float | None:
    if params.latency_budget_ms is not None:
        return parse_budget_ms(params.latency_budget_ms, "latency_budget_ms")
    if params.timeout is not None:  # Triton: microseconds
        timeout_us = parse_budget_ms(params.timeout, "timeout")
        return timeout_us / 1e3 if timeout_us is not None else None
    return parse_budget_ms(request.headers.get("x-latency-budget-ms"))


def _check_outputs(parsed: V2InferRequest) -> None:
    """Unknown requested outputs are refused before the model runs."""
    for out in parsed.outputs or ():
        if out.name != OUTPUT_NAME:
            raise ApiError(400, f"unknown output {out.name!r}; this model outputs {OUTPUT_NAME!r}")


def input_tensor(request: V2InferRequest, tail: bytes | memoryview, engine: Engine) -> torch.Tensor:
    """The request's one input as a float32 ``[N, C, H, W]`` tensor (UINT8 pixels normalised here)."""
    if len(request.inputs) != 1:
        raise ApiError(400, f"expected exactly one input named {INPUT_NAME!r}, got {len(request.inputs)}")
    c, s = engine.card.input.channels, engine.card.input.size
    array, _ = decode_v2_tensor(request.inputs[0], tail, 0, (c, s, s))
    if array.dtype == np.uint8:  # raw pixels: normalised exactly as an image would be
        array = normalize_pixels(array, engine.card.input.mean, engine.card.input.std)
    elif not (array.dtype == np.float32 and array.flags.aligned and array.flags.writeable):
        array = np.array(array, dtype=np.float32)  # own, aligned, native-endian copy
    # else: native FP32 viewing the aligned request buffer (read_body_aligned) is used in place
    if not np.isfinite(array).all():
        raise ApiError(400, "input contains NaN or infinity")
    return torch.from_numpy(array)


def _int_or_zero(value: str | None) -> int:
    """Where the binary tail starts, for aligning it; a bad value is reported by split_binary_body."""
    try:
        return max(0, int(value)) if value is not None else 0
    except ValueError:
        return 0
