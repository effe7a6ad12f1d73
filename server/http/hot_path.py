"""The inference endpoints served straight from the application's ASGI call.

A request to ``POST /v2/models/{name}/infer`` went through eleven ASGI layers before its handler:
FastAPI's and Starlette's (server errors, exception telemetry, body limit, exception handlers,
the async exit stack, the router and its per-route wrapper) around widthwise's own. On the one core
a CPU server shares between requests and the model, those layers were ~10% of the event loop's
time per request (py-spy, BENCHMARKS.md, "Request path overhead"). :class:`HotRoutes` matches the inference
paths itself and runs only widthwise's own middleware (request id and access log, CORS, the
in-flight limit, the bearer token) around the handler, whose exceptions reach the app's own
exception handlers as they would through FastAPI. Every other path, and the OpenAPI description
of these, stays with FastAPI.
"""

from __future__ import annotations

import logging
import re

from starlette.requests import Request

__all__ = ["HotRoutes"]

log = logging.getLogger("widthwise.http")


def _path_pattern(template: str) -> re.Pattern:
    """``/v2/models/{name}/infer`` -> a pattern with one named group per ``{param}`` (one segment)."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts))
    return re.compile(regex)


class HotRoutes:
    """POST routes answered past FastAPI's stack, behind the app's own (user) middleware."""

    def __init__(self, app, routes: list) -> None:
        """``app`` is the FastAPI application (its middleware, exception handlers and state);
        ``routes`` are its routes (``.path`` templates, ``.endpoint`` taking ``(request, **path_params)``)
        to answer here."""
        self.app = app
        self.routes = [(_path_pattern(route.path), route) for route in routes]
        self._stack = None  # built on first use: middleware may be added until the app starts

    def match(self, scope) -> tuple[object, dict[str, str]] | None:
        if scope["method"] != "POST":
            return None
        path = scope["path"]
        for pattern, route in self.routes:
            found = pattern.fullmatch(path)
            if found:
                return route, found.groupdict()
        return None

    async def serve(self, scope, receive, send, route, params: dict[str, str]) -> None:
        scope["app"] = self.app
        scope["path_params"] = params
        scope["endpoint"] = route.endpoint
        scope["route"] = route  # as FastAPI's router sets it: instrumentation names requests by its template
        if self._stack is None:
            self._stack = self._build_stack()
        await self._stack(scope, receive, send)

    def _build_stack(self):
        stack = self._handle
        for middleware in reversed(self.app.user_middleware):  # as Starlette builds it: the last added is outermost
            factory, args, kwargs = middleware
            stack = factory(stack, *args, **kwargs)
        return stack

    async def _handle(self, scope, receive, send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await scope["endpoint"](request, **scope["path_params"])
        except Exception as exc:  # the app's handlers: JSON errors with their statuses
            response = await self._handler_for(exc)(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception):
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        raise exc  # no handler, not even for Exception: as Starlette, let the server report it
