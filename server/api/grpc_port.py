"""The gRPC port and its defences against clients that do not play by the rules.

grpcio reads and parses a call's message before a servicer can look at its metadata, counts calls
against ``maximum_concurrent_rpcs`` until grpc's own bookkeeping lets go of them (which a client
with a stuck receive window can delay indefinitely), keeps idle HTTP/2 connections forever and logs a
traceback for every method a servicer leaves to the generated base. So, before any servicer runs,
:class:`GrpcGuard` (a server interceptor):

- refuses an unauthenticated call (``UNAUTHENTICATED``) from its metadata alone, with a handler that
  never asks for the message: what such a call costs is its stream's flow-control window;
- answers methods the servicer does not implement with ``UNIMPLEMENTED`` and nothing else;
- admits at most ``--max-inflight-http`` calls into the servicer at once (an
  :class:`~server.http.limits.InflightGate` of its own, not HTTP's), the slot released when the
  servicer returns for any reason (done, failed, cancelled, deadline), and refuses the rest with
  ``UNAVAILABLE`` and retry information, as HTTP's 503;
- hands ``ModelInfer`` its message as bytes, so that a large one is parsed off the event loop.

The server's options bound the rest: the message size by what the model can take (the largest batch
of the input, plus framing), idle connections as HTTP's, each connection's age and concurrent
streams, and the number of connections.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import grpc

from server.api.client import EngineClient
from server.http.limits import InflightGate
from server.http.security import bearer_token_matches
from server.settings import Settings

__all__ = ["GrpcGuard", "GrpcPort", "grpc_options", "max_message_bytes", "start_grpc_server"]

log = logging.getLogger("widthwise.grpc")

SERVICE = "inference.GRPCInferenceService"
# Open without a token, as their HTTP twins (/v2/health/*, /v2) are.
OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})
FRAMING_BYTES = 64 * 1024  # what a ModelInfer message carries besides its tensor: names, shape, parameters
CONNECTION_AGE_S = 300  # then GOAWAY: a stream stuck behind a client's closed window cannot outlive it
CONNECTION_AGE_GRACE_S = 30  # for the calls in flight when the GOAWAY goes out
MAX_STREAMS_PER_CONNECTION = 100


def _refusal(code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler that ends the call with ``code`` without ever asking for its message (a streaming
    request is read only when iterated, and this one never is)."""

    async def refuse(_requests, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    return grpc.stream_unary_rpc_method_handler(refuse)


class GrpcGuard(grpc.aio.ServerInterceptor):
    def __init__(self, token: str | None, gate: InflightGate, implemented: frozenset[str],
                 unavailable: Callable[[str], grpc.Status], raw_messages: frozenset[str] = frozenset()) -> None:
        """``implemented``: the method names the servicer defines itself; ``unavailable(message)``: the
        status of a call refused for want of a slot; ``raw_messages``: methods whose servicer takes the
        message as bytes (and parses it itself)."""
        self.token = token.encode() if token else None
        self.gate = gate
        self.implemented = implemented
        self.unavailable = unavailable
        self.raw_messages = raw_messages

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        service, _, name = details.method.lstrip("/").rpartition("/")
        if service != SERVICE or name not in self.implemented:
            return _refusal(grpc.StatusCode.UNIMPLEMENTED, f"method {details.method} is not implemented")
        if self.token is not None and name not in OPEN_METHODS and not self._authorized(details):
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        return self._gated(handler, raw=name in self.raw_messages)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        values = [value for key, value in details.invocation_metadata or () if key == "authorization"]
        return bearer_token_matches([v.encode() if isinstance(v, str) else v for v in values], self.token)

    def _gated(self, handler: grpc.RpcMethodHandler, raw: bool) -> grpc.RpcMethodHandler:
        behavior, gate = handler.unary_unary, self.gate

        async def gated(request, context: grpc.aio.ServicerContext):
            if not gate.try_enter():
                await context.abort_with_status(self.unavailable(f"overloaded: {gate.limit} gRPC calls in flight"))
            try:
                return await behavior(request, context)
            finally:
                gate.leave()

        return grpc.unary_unary_rpc_method_handler(
            gated, request_deserializer=None if raw else handler.request_deserializer,
            response_serializer=handler.response_serializer)


def max_message_bytes(engine: EngineClient, settings: Settings) -> int:
    """The largest message the model can take: its largest batch of FP32 inputs plus framing, and
    never above ``--max-body-bytes``."""
    spec = engine.card.input
    tensor = settings.max_batch_size * spec.channels * spec.size * spec.size * 4
    return min(settings.max_body_bytes, tensor + FRAMING_BYTES)


def grpc_options(max_message: int, settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
        # an idle connection closes as HTTP's keep-alive ones do, a connection lives at most this long
        ("grpc.max_connection_idle_ms", int(settings.header_timeout_s * 1000)),
        ("grpc.max_connection_age_ms", CONNECTION_AGE_S * 1000),
        ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_S * 1000),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        # a fixed 64 KiB window per stream: what a refused call can make the server buffer. Probing
        # the bandwidth-delay product grew windows to megabytes (32 refused 8 MB calls: +10-32 MB of
        # RSS, against <1 MB fixed) for ~4% faster 4.8 MB messages (BENCHMARKS.md, "gRPC vs HTTP")
        ("grpc.http2.bdp_probe", 0),
        ("grpc.max_allowed_incoming_connections", settings.connection_caps()[1]),
        # a peer that vanished without closing its connection is found and its calls cancelled
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


class GrpcPort:
    """The running gRPC server and the gate its calls pass."""

    def __init__(self, server: grpc.aio.Server, gate: InflightGate) -> None:
        self.server = server
        self.gate = gate

    @property
    def saturated(self) -> bool:
        """Every call slot is taken: the port answers UNAVAILABLE until one frees."""
        return self.gate.saturated

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace=grace)


async def start_grpc_server(engine: EngineClient, settings: Settings) -> GrpcPort:
    """Listen on ``--host``:``--grpc-port`` on the running event loop.

    Raises:
        OSError: the port cannot be bound (one line, as a busy HTTP port's).
    """
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from server.api.grpc_service import InferenceServicer, implemented_methods, unavailable

    gate = InflightGate(settings.max_inflight_http)
    guard = GrpcGuard(settings.api_token, gate, implemented_methods(), unavailable, frozenset({"ModelInfer"}))
    server = grpc.aio.server(options=grpc_options(max_message_bytes(engine, settings), settings),
                             interceptors=[guard])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(engine, settings), server)
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises when the address is in use
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address}: the address is in use or not available")
    await server.start()
    log.info("gRPC (KServe v2) listening on %s", address)
    return GrpcPort(server, gate)
