"""KServe v2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) on ``--grpc-port``.

Served by grpcio's asyncio server on the same event loop as HTTP, over the same engine (scheduler,
metrics, statistics) through :mod:`server.api.v2_service`, so both transports answer alike; the port
itself, its token check and its limits are :mod:`server.api.grpc_port`. The
generated messages and servicer base are the ones ``tritonclient[grpc]`` ships
(``tritonclient.grpc.service_pb2``/``service_pb2_grpc``/``model_config_pb2``): the KServe v2
protocol plus Triton's extensions, no ``.proto`` copied here.

Errors map to gRPC status codes as HTTP statuses do: 4xx -> INVALID_ARGUMENT (401 UNAUTHENTICATED,
404 NOT_FOUND), 503 -> UNAVAILABLE with ``google.rpc.RetryInfo`` and ``retry-after`` metadata,
504 -> DEADLINE_EXCEEDED, a failed batch -> INTERNAL. Width and budget come from the request
parameters (``width``, ``latency_budget_ms``, Triton's ``timeout`` in microseconds), else from
``x-width`` / ``x-latency-budget-ms`` metadata (HTTP's headers), else from the call's gRPC deadline
(one already past is DEADLINE_EXCEEDED); the answer's parameters carry ``width``, ``reason``, ``deadline_met`` and
``budget_ms``, its logits are in ``raw_output_contents`` (as Triton answers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from policies import RefusalReason, Refused
from server.api import v2_service
from server.api.client import EngineClient
from server.api.codecs import parse_budget_ms
from server.api.errors import REFUSAL_STATUS
from server.api.outcomes import count_outcome
from server.api.v2_request import parse_v2_request
from server.api.v2_service import MODEL_VERSION, OUTPUT_NAME
from server.engine.errors import InferenceFailed, InvalidRequest
from server.http.errors import ApiError
from server.http.logs import access_log, log_fields, request_id_or_new
from server.settings import Settings

__all__ = ["GRPC_STATUS", "InferenceServicer", "implemented_methods", "unavailable"]

log = logging.getLogger("widthwise.grpc")
SERVICE = "inference.GRPCInferenceService"
OFFLOAD_BYTES = 64 * 1024  # a ModelInfer message longer than this is parsed in a worker thread

# HTTP status of an ApiError -> gRPC status code.
GRPC_STATUS = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Where typed (non-raw) tensor contents live in InferTensorContents, per accepted datatype.
CONTENTS_FIELD = {"FP32": "fp32_contents", "UINT8": "uint_contents"}


@dataclass
class _Call:
    """One RPC, for the access log: ``scope`` collects the fields handlers add (as a Starlette request's)."""

    method: str
    request_id: str
    context: Any = None
    metadata: dict[str, str] = field(default_factory=dict)  # text metadata, read once (see _metadata)
    started: float = field(default_factory=time.perf_counter)
    scope: dict = field(default_factory=dict)

    def deadline_passed(self) -> bool:
        """The call's gRPC deadline has passed (what a cancellation then means; see count_outcome)."""
        remaining = self.context.time_remaining() if self.context is not None else None
        return remaining is not None and remaining <= 0


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple = ()


class _Abort(Exception):
    """Carries the gRPC status an RPC ends with."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 service over one engine. The token, the call limit and the methods it does not implement
    (shared memory, tracing, streaming: UNIMPLEMENTED) are the port's (:mod:`server.api.grpc_port`)."""

    def __init__(self, engine: EngineClient, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    # -- health and metadata --------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.engine.ready)

    async def ServerMetadata(self, request, context):
        meta = v2_service.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def ModelReady(self, request, context):
        return await self._unary(context, "ModelReady", lambda call: pb.ModelReadyResponse(
            ready=self._model(request.name, request.version).ready))

    async def ModelMetadata(self, request, context):
        def answer(call: _Call):
            meta = v2_service.model_metadata(self._model(request.name, request.version))
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
            )
        return await self._unary(context, "ModelMetadata", answer)

    async def ModelConfig(self, request, context):
        def answer(call: _Call):
            config = v2_service.model_config(self._model(request.name, request.version), self.settings)
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))
        return await self._unary(context, "ModelConfig", answer)

    async def ModelStatistics(self, request, context):
        def answer(call: _Call):
            engine = self._model(request.name, request.version) if request.name else self.engine
            stats = v2_service.model_statistics(engine)
            # Triton's message has no place for per-width counts: they travel as JSON metadata.
            widths = [entry.pop("widths") for entry in stats["model_stats"]]
            context.set_trailing_metadata((("widthwise-width-stats", json.dumps(widths[0])),))
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse())
        return await self._unary(context, "ModelStatistics", answer)

    async def RepositoryIndex(self, request, context):
        def answer(call: _Call):
            models = v2_service.repository_index(self.engine, request.ready)
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in models])
        return await self._unary(context, "RepositoryIndex", answer)

    async def RepositoryModelLoad(self, request, context):
        def answer(call: _Call):
            self._model(request.model_name)
            return pb.RepositoryModelLoadResponse()
        return await self._unary(context, "RepositoryModelLoad", answer)

    async def RepositoryModelUnload(self, request, context):
        def answer(call: _Call):
            self._model(request.model_name)
            raise ApiError(400, "widthwise serves one model for the life of the process; stop the server to unload it")
        return await self._unary(context, "RepositoryModelUnload", answer)

    # -- inference ---------------------------------------------------------------

    async def ModelInfer(self, message: bytes, context):
        """``message`` is the serialized request (the port hands it over as bytes): a large one is
        parsed, and its typed contents turned into a list, in a worker thread, not on the event loop."""
        arrival = time.monotonic()
        call = self._call("ModelInfer", context)
        offload = len(message) > OFFLOAD_BYTES
        try:
            async with count_outcome(self.engine, call) as record:
                request = await asyncio.to_thread(_parse, message) if offload else _parse(message)
                engine = self._model(request.model_name, request.model_version)
                parsed, tail, large = await asyncio.to_thread(_v2_request, request) if offload else _v2_request(request)
                remaining = context.time_remaining()  # the client's deadline, seconds (None: none)
                if remaining is not None and remaining <= 0:
                    raise Refused(RefusalReason.EXPIRED, "the call's deadline had passed when it arrived")
                budget_header = parse_budget_ms(call.metadata.get("x-latency-budget-ms"), "x-latency-budget-ms")
                width, budget_ms = v2_service.request_options(
                    parsed.parameters, engine, call.metadata.get("x-width"),
                    budget_header if budget_header is not None else
                    (remaining * 1e3 if remaining is not None else None),
                )
                log_fields(call, budget_ms=budget_ms, pinned_width=width)
                answer = await v2_service.infer(engine, parsed, tail, width=width, budget_ms=budget_ms,
                                                arrival=arrival, record=record, offload=large)
            response = pb.ModelInferResponse(model_name=engine.name, model_version=MODEL_VERSION, id=request.id)
            for key, value in answer.parameters().items():
                if value is not None:
                    _set_parameter(response.parameters[key], value)
            # the data travels in raw_output_contents, as Triton sends it
            response.outputs.add(name=OUTPUT_NAME, datatype="FP32", shape=list(answer.logits.shape))
            response.raw_output_contents.append(answer.logits.astype("<f4", copy=False).tobytes())
            self._log(call, grpc.StatusCode.OK)
            return response
        except Exception as exc:  # every failure ends as a status, never a bare traceback
            await self._abort(context, call, exc)

    # -- plumbing -----------------------------------------------------------------

    async def _unary(self, context, method: str, answer):
        call = self._call(method, context)
        try:
            response = answer(call)
        except Exception as exc:
            await self._abort(context, call, exc)
        self._log(call, grpc.StatusCode.OK)
        return response

    def _call(self, method: str, context) -> _Call:
        metadata = _metadata(context)
        return _Call(method, request_id_or_new(metadata.get("x-request-id")), context, metadata)

    def _model(self, name: str, model_version: str = "") -> EngineClient:
        return v2_service.find_model(self.engine, name, model_version)

    async def _abort(self, context, call: _Call, exc: Exception) -> None:
        status = _status_of(exc, self.settings.retry_after_s)
        if status.code is grpc.StatusCode.INTERNAL and not isinstance(exc, InferenceFailed):
            log.exception("unhandled error in %s", call.method)
        call.scope.setdefault("widthwise.log", {}).setdefault("error", status.details)
        self._log(call, status.code)
        await context.abort_with_status(status)

    def _log(self, call: _Call, code: grpc.StatusCode) -> None:
        if access_log.isEnabledFor(logging.INFO):
            fields = {"request_id": call.request_id, "method": "grpc", "path": f"/{SERVICE}/{call.method}",
                      "status": code.name, "duration_ms": round((time.perf_counter() - call.started) * 1e3, 3),
                      **call.scope.get("widthwise.log", {})}
            access_log.info("request", extra={"fields": fields})


def _status_of(exc: Exception, retry_after_s: int) -> grpc.Status:
    """The gRPC status an exception ends an RPC with (the HTTP error table, translated)."""
    if isinstance(exc, Refused):
        http = REFUSAL_STATUS[exc.reason]
        if http == 503:
            return unavailable(exc.message, retry_after_s)
        return _Status(grpc.StatusCode.DEADLINE_EXCEEDED, exc.message)
    if isinstance(exc, ApiError):
        return _Status(GRPC_STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)
    if isinstance(exc, InvalidRequest):
        return _Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, InferenceFailed):
        return _Status(grpc.StatusCode.INTERNAL, str(exc))
    return _Status(grpc.StatusCode.INTERNAL, "internal server error")


def implemented_methods() -> frozenset[str]:
    """The methods :class:`InferenceServicer` defines; the generated base's others answer UNIMPLEMENTED."""
    return frozenset(name for name, value in vars(InferenceServicer).items()
                     if name[:1].isupper() and callable(value))


def _metadata(context) -> dict[str, str]:
    """The call's text metadata by (lower-case) key; the first of a repeated key."""
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found.setdefault(key, value)
    return found


def _parse(message: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(message)
    except DecodeError:
        raise ApiError(400, "malformed ModelInferRequest message") from None


def unavailable(message: str, retry_after_s: int = 1) -> grpc.Status:
    """UNAVAILABLE with ``google.rpc.RetryInfo`` (what gRPC clients read) and ``retry-after`` (as HTTP's header):
    a refusal for load, here or by the port for want of a call slot."""
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s))
    rich = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    rich.details.add().Pack(retry)
    status = rpc_status.to_status(rich)
    return _Status(status.code, status.details, (*status.trailing_metadata, ("retry-after", str(retry_after_s))))


def _parameter_value(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def _set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, (int, float)):
        parameter.double_param = float(value)
    else:
        parameter.string_param = str(value)


def _v2_request(request: pb.ModelInferRequest):
    """The protobuf request as the validated v2 request the HTTP side builds, its binary data, and
    whether its typed contents are large enough to be turned into a tensor off the event loop."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ApiError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    if raw and any(tensor.HasField("contents") for tensor in request.inputs):
        raise ApiError(400, "an input carries both raw_input_contents and typed contents; send one of them")
    inputs, typed = [], 0
    for i, tensor in enumerate(request.inputs):
        spec: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            spec["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field_name = CONTENTS_FIELD.get(tensor.datatype)
            if field_name is None:
                raise ApiError(400, f"input {tensor.name!r}: datatype {tensor.datatype!r} needs raw_input_contents "
                                    f"(typed contents are accepted for {', '.join(CONTENTS_FIELD)})")
            values = getattr(tensor.contents, field_name)
            spec["data"] = list(values)
            typed += len(values)
        inputs.append(spec)
    header = {
        "inputs": inputs,
        "outputs": [{"name": o.name} for o in request.outputs] or None,
        "parameters": {key: _parameter_value(p) for key, p in request.parameters.items()},
    }
    if request.id:
        header["id"] = request.id
    tail = raw[0] if len(raw) == 1 else b"".join(raw)
    return parse_v2_request(header), tail, typed * 4 > OFFLOAD_BYTES
