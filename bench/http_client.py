"""A lean open-loop HTTP/1.1 client for load tests: pre-built request bytes, a pool of keep-alive
connections, only the status line and a few headers parsed.

A general client (httpx) spends ~2 ms of CPU per request here; on the load generator's core that
time queues answers behind each other and counts against the server's budget at the client. This
one spends a fraction of that, so what the client measures is the server and the loopback.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

__all__ = ["Answer", "LeanClient"]


class Answer(NamedTuple):
    status: int  # 0 when the connection failed
    elapsed_ms: float  # from the call to the whole answer
    headers: dict[str, str]  # names lower-case
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        self.waiter.set_result((int(head[0].split(" ", 2)[1]), headers, body))


class LeanClient:
    """POSTs one fixed request to ``host:port``; a connection per request in flight (at most
    ``max_connections``; beyond that requests wait for one, as with any pooled client), reused when idle."""

    def __init__(self, host: str, port: int, path: str, body: bytes, headers: dict[str, str],
                 max_connections: int = 512) -> None:
        self.host, self.port = host, port
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        self._all.append(conn)
        return conn

    async def post(self) -> Answer:
        """Send the request and wait for the whole answer."""
        start = time.perf_counter()
        async with self._slots:
            try:
                conn = await self._connection()
                conn.waiter = asyncio.get_running_loop().create_future()
                conn.transport.write(self.request)
                status, headers, body = await conn.waiter
            except (OSError, ConnectionError):
                return Answer(0, (time.perf_counter() - start) * 1e3, {}, b"")
            elapsed = (time.perf_counter() - start) * 1e3
            conn.waiter = None
            if headers.get("connection", "").lower() == "close":
                conn.transport.close()
            else:
                self._idle.append(conn)
            return Answer(status, elapsed, headers, body)

    def close(self) -> None:
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
