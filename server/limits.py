"""A bound on in-flight HTTP requests, answered like every other overload: JSON 503 + Retry-After.

uvicorn's own ``limit_concurrency`` answers with a plain-text 503 and no
Retry-After; this middleware keeps the error contract and never reads the body
of a request it turns away. Health, readiness and metrics are never refused.
"""

from __future__ import annotations

import json

__all__ = ["InflightLimitMiddleware"]

EXEMPT = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")


class InflightLimitMiddleware:
    def __init__(self, app, limit: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = str(retry_after_s).encode()
        self.inflight = 0  # only touched on the event loop thread

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            body = json.dumps({"error": f"overloaded: {self.limit} requests in flight"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", self.retry_after),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
