"""API errors: every failure is JSON ``{"error": "..."}`` with the right status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .logs import text_value
from .scheduler import InferenceFailed, Rejected

__all__ = ["ApiError", "install_error_handlers", "error_response"]

log = logging.getLogger("widthwise.http")


class ApiError(Exception):
    """A client error (4xx) with a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _rejected_headers(exc: Rejected) -> dict[str, str]:
    return {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(Rejected)
    async def _rejected(_request: Request, exc: Rejected) -> JSONResponse:
        return error_response(exc.status, exc.message, _rejected_headers(exc))

    @app.exception_handler(InferenceFailed)
    async def _failed(_request: Request, exc: InferenceFailed) -> JSONResponse:
        return error_response(500, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, f"invalid {where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", text_value(request.method), text_value(request.url.path))
        return error_response(500, "internal server error")
