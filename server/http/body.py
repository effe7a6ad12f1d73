"""Reading request bodies within bounds of size and time, and when the request arrived."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from starlette.requests import ClientDisconnect

from server.http.direct_body import BODY_KEY, aligned_buffer
from server.http.errors import ApiError
from server.http.protocols import ARRIVAL_KEY


def arrival(request: Request) -> float:
    """``time.monotonic()`` when the server read the request's first byte (the protocol stamps it);
    now, for requests that did not come through it (in-process test clients)."""
    return request.scope.get(ARRIVAL_KEY) or time.monotonic()

__all__ = ["arrival", "read_body", "read_body_aligned", "parse_multipart"]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body: 413 over ``limit`` bytes (before reading it all), 408 when the client is
    too slow to send it (``--body-timeout-s``; a slow sender must not hold a slot forever)."""
    return await _bounded_in_time(request, _read_joined(request, limit))


async def read_body_aligned(request: Request, limit: int, offset: int) -> memoryview:
    """Like :func:`read_body`, but the body lands in one buffer where ``body[offset:]`` starts on
    a 64-byte boundary, so a binary tensor after a JSON header of ``offset`` bytes is used in
    place: one copy from the socket chunks instead of three (join, slice, align)."""
    return await _bounded_in_time(request, _read_aligned(request, limit, offset))


CLIENT_CLOSED = 499  # nginx's status for a client that went away; nobody receives it, the log and metrics do


async def _bounded_in_time(request: Request, reading):
    try:
        async with asyncio.timeout(request.app.state.settings.body_timeout_s):
            return await reading
    except TimeoutError:
        raise ApiError(408, "request body not received in time") from None
    except ClientDisconnect:  # the client's doing, not a server error: counted bad_request, no traceback
        raise ApiError(CLIENT_CLOSED, "client closed the connection before sending the whole body") from None


def _declared_length(request: Request, limit: int) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        length = int(declared)
    except ValueError:
        raise ApiError(400, "Content-Length must be an integer") from None
    if length > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    return length


async def _read_joined(request: Request, limit: int) -> bytes:
    _declared_length(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_aligned(request: Request, limit: int, offset: int) -> memoryview:
    length = _declared_length(request, limit)
    if length is None:  # chunked transfer: size unknown up front
        return memoryview(await _read_joined(request, limit))
    sink = request.scope.get(BODY_KEY)
    if sink is not None and sink.offset == offset and sink.length == length:
        # The protocol reads this body into its own aligned buffer; receive() says when it is all in.
        async for _ in request.stream():
            pass
        return sink.view
    body = aligned_buffer(length, offset)
    size = 0
    async for chunk in request.stream():
        end = size + len(chunk)
        if end > length:
            raise ApiError(400, f"request body is longer than its Content-Length of {length} bytes")
        body[size:end] = chunk
        size = end
    if size != length:
        raise ApiError(400, f"request body of {size} bytes is shorter than its Content-Length of {length} bytes")
    return body


async def parse_multipart(scope: dict, body: bytes, limit: int, max_files: int = 1):
    """The form of a multipart ``body`` already read (and size-checked); 400 when malformed, 413
    with more than ``max_files`` files. The caller closes the form (it may hold spooled temporary files)."""
    from starlette.requests import Request as StarletteRequest

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    clone = StarletteRequest(scope, replay)
    try:
        return await clone.form(max_files=max_files, max_fields=8, max_part_size=limit)
    except Exception as exc:  # malformed multipart
        if "Too many files" in str(exc):  # Starlette's MultiPartException for max_files
            raise ApiError(413, f"more than {max_files} images in one request") from None
        raise ApiError(400, f"malformed multipart body: {exc}") from None
