"""Client errors of the transport: every failure is JSON ``{"error": "..."}`` with the right status."""

from __future__ import annotations

from fastapi.responses import JSONResponse

__all__ = ["ApiError", "error_response"]


class ApiError(Exception):
    """A client error (4xx) with a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
