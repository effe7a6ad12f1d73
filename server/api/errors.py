"""How the engine's refusals and failures become HTTP statuses: the one table, and the app's exception handlers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from policies import RefusalReason, Refused
from server.engine.errors import InferenceFailed, InvalidRequest
from server.http.errors import ApiError, error_response
from server.http.logs import text_value

__all__ = ["REFUSAL_STATUS", "install_error_handlers", "refusal_response"]

log = logging.getLogger("widthwise.http")


# The one place refusals become HTTP: 503 (+ Retry-After) when trying again later or elsewhere can
# succeed, 504 when this request's deadline cannot be met.
REFUSAL_STATUS = {
    RefusalReason.NOT_READY: 503,
    RefusalReason.CLOSED: 503,
    RefusalReason.FULL: 503,
    RefusalReason.OVERLOADED: 503,
    RefusalReason.INFEASIBLE: 504,
    RefusalReason.EXPIRED: 504,
}


def refusal_response(exc: Refused, retry_after_s: int) -> JSONResponse:
    status = REFUSAL_STATUS[exc.reason]
    return error_response(status, exc.message, {"Retry-After": str(retry_after_s)} if status == 503 else None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return refusal_response(exc, request.app.state.settings.retry_after_s)

    @app.exception_handler(InvalidRequest)
    async def _invalid(_request: Request, exc: InvalidRequest) -> JSONResponse:
        return error_response(400, str(exc))

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
