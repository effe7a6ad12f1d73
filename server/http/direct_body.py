"""Binary tensor bodies read from the socket straight into the buffer the model reads.

uvicorn hands a request body to the application in pieces, and each piece is copied on the way:
the event loop makes a bytes object of each read, httptools another for its body callback, uvicorn
appends it to the request's bytearray (reading pauses past 64 KB until the application asks for
more) and copies that for ``receive()``; the handler then copied the pieces into one aligned buffer.
For a 602 KB FP32 tensor that was ~1 ms of CPU per request on the core the server shares with the
model -- as long as the narrowest width's inference -- against ~0.1 ms for reading it into one
buffer (BENCHMARKS.md, "Serving CPU per request").

:class:`DirectBody` (on uvicorn's httptools protocol, behind a :class:`BufferedAdapter` the event
loop reads through) feeds the parser from one reused read buffer between requests. When a v2
inference request of at least 64 KB (a binary tensor after an ``Inference-Header-Content-Length``
JSON header, or all JSON) with a ``Content-Length`` within the body limit has its headers in, it
allocates the body's buffer -- aligned so a tensor after the JSON header starts on a 64-byte
boundary -- and the event loop reads the rest of the body into it. The handler finds it in the ASGI
scope (:data:`BODY_KEY`) and waits, through ``receive()`` as before, until it is complete;
disconnects, ``Expect: 100-continue`` and the body timeout work as for any body.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import httptools
import numpy as np

__all__ = ["DirectBody", "BufferedAdapter", "BodySink", "aligned_buffer", "BODY_KEY", "ALIGNMENT", "V2_INFER_PATH"]

# ASGI scope key: the request's BodySink, when the protocol reads its body directly.
BODY_KEY = "widthwise.body"

ALIGNMENT = 64  # bytes; ONNX Runtime's and numpy's kernels read aligned tensors fastest

# The v2 inference endpoints (with or without a model version), wherever the app is mounted.
V2_INFER_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer\Z")


def aligned_buffer(length: int, offset: int) -> memoryview:
    """A writable ``length``-byte buffer whose bytes from ``offset`` on start on an :data:`ALIGNMENT`
    boundary (where a binary tensor follows a JSON header of ``offset`` bytes)."""
    buffer = np.empty(length + ALIGNMENT, dtype=np.uint8)
    start = -(buffer.ctypes.data + offset) % ALIGNMENT
    return memoryview(buffer)[start:start + length]


class BodySink:
    """One request body's buffer: ``view[offset:]`` starts on an :data:`ALIGNMENT` boundary."""

    __slots__ = ("view", "offset", "length", "filled")

    def __init__(self, length: int, offset: int) -> None:
        self.view: memoryview | None = aligned_buffer(length, offset)
        self.offset = offset
        self.length = length
        self.filled = 0

    @property
    def complete(self) -> bool:
        return self.filled == self.length

    def write(self, data: bytes) -> None:
        """Body bytes the parser saw (those that arrived with the headers)."""
        end = self.filled + len(data)
        if self.view is not None:
            self.view[self.filled:end] = data  # the parser never delivers more than Content-Length
        self.filled = end

    def release(self) -> None:
        """Nobody will read this body (its request was answered first): drop the buffer, keep counting."""
        self.view = None


class DirectBody:
    """Mixin for uvicorn's ``HttpToolsProtocol``, served through :class:`BufferedAdapter`."""

    body_limit = 8 * 1024 * 1024  # set per server by protocol_class(): --max-body-bytes
    MIN_DIRECT_BYTES = 64 * 1024  # smaller bodies arrive in one read anyway
    READ_BYTES = 256 * 1024  # what the parser is fed per read (uvloop's own read size)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._read_view = memoryview(bytearray(self.READ_BYTES))
        self._sink: BodySink | None = None  # the current request's body, while the loop reads into it
        self._parsing_into: BodySink | None = None  # chosen by on_headers_complete, during a parse

    def get_buffer(self, sizehint: int) -> memoryview:
        sink = self._sink
        if sink is None:
            return self._read_view
        if sink.view is None or self.cycle.response_complete:
            # Answered before its body arrived (a 503, a 404): the rest of the body is read and
            # dropped, as uvicorn does, instead of holding up to --max-body-bytes per connection.
            sink.release()
            return self._read_view[:sink.length - sink.filled]
        return sink.view[sink.filled:]

    def buffer_updated(self, nbytes: int) -> None:
        sink = self._sink
        if sink is None:
            self.data_received(self._read_view[:nbytes])  # httptools copies what it keeps
            sink = self._parsing_into
            if sink is not None:  # headers and part of a direct body in this read: the rest goes to the sink
                self._parsing_into = None
                self._sink = sink
            return
        sink.filled += nbytes
        if sink.complete:
            self._sink = None
            # The parser still waits for the body it never saw: a fresh one for the next request.
            self.parser = httptools.HttpRequestParser(self)
            with contextlib.suppress(AttributeError):  # httptools < 0.6.3 has no leniencies
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's own
            super().on_message_complete()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.scope["method"] != "POST" or self.cycle is None or not V2_INFER_PATH.search(self.scope["path"]):
            return
        length = offset = None
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"inference-header-content-length":
                offset = value
            elif name == b"transfer-encoding":
                return  # chunked: the parser decodes it
        try:
            length, offset = int(length), int(offset) if offset is not None else 0  # 0: all JSON
        except (TypeError, ValueError):
            return  # headers the handler answers with a 400
        if self.MIN_DIRECT_BYTES <= length <= self.body_limit and 0 <= offset <= length:
            sink = BodySink(length, offset)
            self.cycle.scope[BODY_KEY] = sink
            self._parsing_into = sink

    def on_body(self, body: bytes) -> None:
        sink = self._parsing_into
        if sink is None:
            super().on_body(body)
        else:  # even after an early response: the sink counts the body's bytes to its end
            sink.write(body)

    def on_message_complete(self) -> None:
        self._parsing_into = None  # the whole body came with the headers: the parser saw it all
        super().on_message_complete()

    def connection_lost(self, exc) -> None:
        self._sink = self._parsing_into = None
        super().connection_lost(exc)


class BufferedAdapter(asyncio.BufferedProtocol):
    """What the event loop talks to: a plain :class:`asyncio.BufferedProtocol` in front of the HTTP
    protocol. uvloop reads into ``get_buffer()`` only for protocols that are not ``asyncio.Protocol``
    instances, which uvicorn's are; everything else goes to the HTTP protocol unchanged (uvicorn
    tracks and drains that one)."""

    protocol_class: type  # a DirectBody HttpToolsProtocol; set per server by protocol_class()
    connections_accepted = 0  # per server class, like HeaderDeadline's

    def __init__(self, *args, **kwargs) -> None:
        self.http = self.protocol_class(*args, **kwargs)

    def connection_made(self, transport) -> None:
        type(self).connections_accepted += 1
        self.http.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.http.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.http.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self.http.eof_received()

    def connection_lost(self, exc) -> None:
        self.http.connection_lost(exc)

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()
