"""Helpers shared by the routers: bounded body reading, engine access, response headers."""

from __future__ import annotations

import asyncio

from fastapi import Request

from .engine import Engine, InferenceResult
from .errors import ApiError

__all__ = ["read_body", "get_engine", "timing_headers"]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body: 413 over ``limit`` bytes (before reading it all), 408 when the client is
    too slow to send it (``--body-timeout-s``; a slow sender must not hold a slot forever)."""
    try:
        async with asyncio.timeout(request.app.state.settings.body_timeout_s):
            return await _read_body(request, limit)
    except TimeoutError:
        raise ApiError(408, "request body not received in time") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        except ValueError:
            raise ApiError(400, "Content-Length must be an integer") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def timing_headers(result: InferenceResult, total_s: float) -> dict[str, str]:
    return {
        "X-Served-Width": f"{result.width:g}",
        "Server-Timing": (
            f"queue;dur={result.queue_s * 1e3:.3f}, inference;dur={result.inference_s * 1e3:.3f}, "
            f"total;dur={total_s * 1e3:.3f}"
        ),
    }
