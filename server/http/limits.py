"""A bound on in-flight HTTP requests, answered like every other overload: JSON 503 + Retry-After.

uvicorn's own ``limit_concurrency`` answers with a plain-text 503 and no
Retry-After; this middleware keeps the error contract and never reads the body
of a request it turns away. Health, readiness and metrics are never refused.
"""

from __future__ import annotations

import json

__all__ = ["InflightGate", "InflightLimitMiddleware", "send_json_error"]

EXEMPT = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")


async def send_json_error(send, status: int, message: str, extra_headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + (
        extra_headers or []
    )
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class InflightGate:
    """Requests in flight, at most ``limit``: HTTP's (one count per application, shared by the middleware
    instances of both its request paths, FastAPI's stack and the hot inference routes) and, in a gate
    of its own, the gRPC port's calls (server/api/grpc_port.py). Only touched on the event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0

    def try_enter(self) -> bool:
        if self.saturated:
            return False
        self.inflight += 1
        return True

    def leave(self) -> None:
        self.inflight -= 1

    @property
    def saturated(self) -> bool:
        return self.inflight >= self.limit


class InflightLimitMiddleware:
    """Also refuses oversized header sets (431): the HTTP parser uvicorn picks (httptools) has no limit of its own."""

    def __init__(self, app, gate: InflightGate, retry_after_s: int = 1, max_header_bytes: int = 16 * 1024) -> None:
        self.app = app
        self.gate = gate
        self.max_header_bytes = max_header_bytes
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
            await send_json_error(send, 431, f"request headers exceed {self.max_header_bytes} bytes")
            return
        if scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if not gate.try_enter():
            await send_json_error(
                send, 503, f"overloaded: {gate.limit} requests in flight", [(b"retry-after", self.retry_after)]
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.leave()
