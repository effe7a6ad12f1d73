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

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from server.api import v2_service
from server.api.client import EngineClient
from server.api.codecs import parse_budget_ms, parse_json, split_binary_body
from server.api.outcomes import count_outcome
from server.api.replies import get_engine, timing_headers
from server.api.schemas import INFER_OPENAPI, V2InferResponse, error_responses
from server.api.v2_request import parse_v2_request
from server.api.v2_service import MODEL_VERSION, OUTPUT_NAME
from server.http.body import arrival, read_body, read_body_aligned
from server.http.errors import ApiError
from server.http.logs import log_fields

router = APIRouter(tags=["kserve-v2"])

INLINE_PARSE_BYTES = 64 * 1024  # larger bodies are parsed in a worker thread


def _model(request: Request, name: str, model_version: str | None = None) -> EngineClient:
    return v2_service.find_model(get_engine(request), name, model_version)


@router.get("/v2")
async def server_metadata() -> dict:
    return v2_service.server_metadata()


EMPTY = {"content": {}}  # Triton answers health and readiness with an empty body


@router.get("/v2/health/live", response_class=Response, responses={200: {"description": "live", **EMPTY}})
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", response_class=Response,
            responses={200: {"description": "ready", **EMPTY}, 503: {"description": "not ready", **EMPTY}})
async def ready(request: Request) -> Response:
    return Response(status_code=200 if get_engine(request).ready else 503)


@router.get("/v2/models/stats", responses=error_responses(401))
async def all_model_statistics(request: Request) -> dict:
    """Triton's statistics for every model (here: the one served)."""
    return v2_service.model_statistics(get_engine(request))


@router.get("/v2/models/{name}", responses=error_responses(401, 404))
@router.get("/v2/models/{name}/versions/{model_version}", responses=error_responses(401, 404))
async def model_metadata(request: Request, name: str, model_version: str | None = None) -> dict:
    return v2_service.model_metadata(_model(request, name, model_version))


_READY = {"response_class": Response,
          "responses": {200: {"description": "ready", **EMPTY}, 503: {"description": "not ready", **EMPTY},
                        **error_responses(401, 404)}}


@router.get("/v2/models/{name}/ready", **_READY)
@router.get("/v2/models/{name}/versions/{model_version}/ready", **_READY)
async def model_ready(request: Request, name: str, model_version: str | None = None) -> Response:
    engine = _model(request, name, model_version)
    return Response(status_code=200 if engine.ready else 503)


@router.get("/v2/models/{name}/config", responses=error_responses(401, 404))
@router.get("/v2/models/{name}/versions/{model_version}/config", responses=error_responses(401, 404))
async def model_config(request: Request, name: str, model_version: str | None = None) -> dict:
    """Triton's model configuration: max batch size, inputs (one per accepted datatype), output,
    dynamic batching, and the widths and policy as parameters."""
    return v2_service.model_config(_model(request, name, model_version), request.app.state.settings)


@router.get("/v2/models/{name}/stats", responses=error_responses(401, 404))
@router.get("/v2/models/{name}/versions/{model_version}/stats", responses=error_responses(401, 404))
async def model_statistics(request: Request, name: str, model_version: str | None = None) -> dict:
    """Triton's statistics: inference/queue/compute durations and counts, batch statistics, and per width
    the requests answered, samples and batches executed and the policy's reasons."""
    return v2_service.model_statistics(_model(request, name, model_version))


@router.post("/v2/repository/index", responses=error_responses(400, 401))
async def repository_index(request: Request) -> list[dict]:
    """Triton's repository index; body ``{"ready": true}`` (optional) lists only ready models."""
    body = await read_body(request, 64 * 1024)
    ready_only = False
    if body.strip():
        document = parse_json(body)
        if not isinstance(document, dict) or not isinstance(document.get("ready", False), bool):
            raise ApiError(400, 'repository index request must be a JSON object with an optional boolean "ready"')
        ready_only = document.get("ready", False)
    return v2_service.repository_index(get_engine(request), ready_only)


@router.post("/v2/repository/models/{name}/load", responses=error_responses(400, 401, 404))
async def load_model(request: Request, name: str) -> Response:
    """The served model is loaded for the life of the process: 200 for it, 404 for any other."""
    _model(request, name)
    return Response(status_code=200)


@router.post("/v2/repository/models/{name}/unload", responses=error_responses(400, 401, 404))
async def unload_model(request: Request, name: str) -> Response:
    _model(request, name)
    raise ApiError(400, "widthwise serves one model for the life of the process; stop the server to unload it")


_INFER = {"response_model": V2InferResponse, "openapi_extra": INFER_OPENAPI,
          "responses": error_responses(400, 401, 404, 408, 413, 422, 500, 503, 504)}


@router.post("/v2/models/{name}/infer", **_INFER)
@router.post("/v2/models/{name}/versions/{model_version}/infer", **_INFER)
async def infer(request: Request, name: str, model_version: str | None = None) -> Response:
    started = arrival(request)  # the budget counts from the request's first byte
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
        width, budget_ms = v2_service.request_options(
            parsed.parameters, engine, request.headers.get("x-width"),
            parse_budget_ms(request.headers.get("x-latency-budget-ms")))
        log_fields(request, budget_ms=budget_ms, pinned_width=width)
        answer = await v2_service.infer(engine, parsed, tail, width=width, budget_ms=budget_ms, arrival=started,
                                        record=record, offload=large)
        output = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(answer.logits.shape)}
        response = {
            "model_name": engine.name,
            "model_version": MODEL_VERSION,
            "parameters": answer.parameters(),
            "outputs": [output],
        }
        if parsed.id is not None:
            response["id"] = parsed.id
        headers = timing_headers(answer.result, answer.total_s, answer.input_s)
        if not parsed.wants_binary_output():
            output["data"] = answer.logits.ravel().tolist()
            return JSONResponse(response, headers=headers)
        raw = answer.logits.astype("<f4", copy=False).tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps(response).encode()
        headers["Inference-Header-Content-Length"] = str(len(head))
        return Response(head + raw, media_type="application/octet-stream", headers=headers)


def _int_or_zero(value: str | None) -> int:
    """Where the binary tail starts, for aligning it; a bad value is reported by split_binary_body."""
    try:
        return max(0, int(value)) if value is not None else 0
    except ValueError:
        return 0
