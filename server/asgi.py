"""The application for any ASGI server: ``granian --interface asgi --factory server.asgi:create_app``.

Configured from ``WIDTHWISE_*`` environment variables only (there are no flags). ``widthwise
serve`` (uvicorn) adds what only it has: the first-byte deadline clock, the request-header
timeout, JSON errors for malformed HTTP, and the SIGTERM drain that keeps the listener open until
the queue is empty. Under another server budgets count from when the handler starts.
"""

from __future__ import annotations

from fastapi import FastAPI

from server.app import build_app
from server.http.logs import configure_logging
from server.settings import Settings

__all__ = ["create_app"]


def create_app() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return build_app(settings)
