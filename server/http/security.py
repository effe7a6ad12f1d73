"""Optional bearer-token access control (``WIDTHWISE_API_TOKEN``), as ASGI middleware.

Protected: the native API (``/v1/...``) and the v2 model endpoints
(``/v2/models/...``, ``/v2/repository/...``). Open: liveness/readiness, ``/v2`` server metadata, the
OpenAPI docs, and ``/metrics`` unless ``--auth-metrics on``. A middleware
costs a few microseconds per request; FastAPI dependencies cost ~100x more.
"""

from __future__ import annotations

import hmac

from server.http.limits import send_json_error

__all__ = ["BearerTokenMiddleware", "bearer_token_matches", "is_protected"]

PROTECTED_PREFIXES = ("/v1/", "/v2/models/", "/v2/repository/")


def bearer_token_matches(values: list[bytes], token: bytes) -> bool:
    """Whether the ``authorization`` values a request sent are exactly one ``Bearer <token>``: a repeated
    header is refused, whatever its copies say (proxies and servers disagree on which copy counts).
    ``compare_digest``: the time taken does not reveal how much of the token matched."""
    if len(values) != 1:
        return False
    scheme, _, credentials = values[0].partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)


def is_protected(path: str, protect_metrics: bool) -> bool:
    return path.startswith(PROTECTED_PREFIXES) or (protect_metrics and path == "/metrics")


class BearerTokenMiddleware:
    def __init__(self, app, token: str, protect_metrics: bool = False) -> None:
        self.app = app
        self._token = token.encode()
        self.protect_metrics = protect_metrics

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] == "http"
            and is_protected(scope["path"], self.protect_metrics)
            and not self._authorized(scope)
        ):
            await send_json_error(
                send, 401, "missing or invalid bearer token", [(b"www-authenticate", b'Bearer realm="widthwise"')]
            )
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope) -> bool:
        return bearer_token_matches([value for name, value in scope["headers"] if name == b"authorization"],
                                    self._token)
