"""read_body_aligned: the binary tail lands on a 64-byte boundary, and framing errors are 4xx."""

import asyncio
import types

import numpy as np
import pytest
from starlette.requests import Request

from server.http.body import read_body_aligned
from server.http.direct_body import ALIGNMENT
from server.http.errors import ApiError


def make_request(chunks: list[bytes], content_length: int | None) -> Request:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    app = types.SimpleNamespace(state=types.SimpleNamespace(settings=types.SimpleNamespace(body_timeout_s=5.0)))
    return Request({"type": "http", "method": "POST", "headers": headers, "app": app}, receive)


def address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data


@pytest.mark.parametrize("offset", [0, 1, 13, 63, 64, 200])
def test_tail_is_aligned_and_body_intact(offset):
    body = bytes(range(256)) * 4
    view = asyncio.run(read_body_aligned(make_request([body[:300], body[300:]], len(body)), 1 << 20, offset))
    assert bytes(view) == body
    assert address(view[offset:]) % ALIGNMENT == 0


def test_chunked_body_without_length_is_read_whole():
    view = asyncio.run(read_body_aligned(make_request([b"abc", b"def"], None), 1 << 20, 2))
    assert bytes(view) == b"abcdef"


def test_short_long_and_oversized_bodies_are_4xx():
    with pytest.raises(ApiError) as short:
        asyncio.run(read_body_aligned(make_request([b"abc"], 10), 1 << 20, 0))
    assert short.value.status == 400 and "shorter" in short.value.message
    with pytest.raises(ApiError) as long:
        asyncio.run(read_body_aligned(make_request([b"abcdef"], 3), 1 << 20, 0))
    assert long.value.status == 400 and "longer" in long.value.message
    with pytest.raises(ApiError) as big:
        asyncio.run(read_body_aligned(make_request([b"x"], 5000), 4096, 0))
    assert big.value.status == 413
