"""uvicorn's HTTP protocols with what it lacks: a deadline for request headers, JSON errors, and
the time each request's first byte was read (where its latency budget starts).

uvicorn bounds idle keep-alive connections and we bound bodies (``--body-timeout-s``), but a
connection that sends nothing, or trickles one header line every few seconds, was held open
forever. Each connection here must deliver a request's headers within ``--header-timeout-s`` of
connecting (or of its previous response); otherwise it gets a JSON 408 and is closed -- the same
bound as Envoy's ``request_headers_timeout`` or nginx's ``client_header_timeout``. uvicorn's own
400 for malformed HTTP is JSON too, like every other error of the API.

Open connections are capped (``--max-connections``): a connection past the cap closes the oldest
one that has no request in progress (idle keep-alive, or still sending its headers), as nginx
reuses keep-alive connections under pressure. File descriptors stay bounded, and a new connection --
a health check -- is always accepted: what gives way is a connection doing nothing.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.http.direct_body import BufferedAdapter, DirectBody

__all__ = ["protocol_class", "HeaderDeadline", "ARRIVAL_KEY"]

# ASGI scope key: time.monotonic() when the server read the request's first byte. Budgets count
# from here, so time spent receiving headers and body, and waiting for the event loop between
# reading and the handler, is inside the budget (uvicorn has nothing for it).
ARRIVAL_KEY = "widthwise.arrival"


def _json_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class HeaderDeadline:
    """Mixin for uvicorn's protocols. A request has begun once the protocol made a new cycle for it
    (both protocols do so when the headers are complete), which the timer checks when it fires."""

    header_timeout_s = 10.0  # set per server by protocol_class()
    connections_accepted = 0  # per server class; the drain on shutdown waits until this stops growing
    max_connections = 1024  # set per server by protocol_class()
    open_connections: OrderedDict  # per server class: every open connection, oldest first

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        type(self).connections_accepted += 1
        self._next_arrival: float | None = None
        self._stamped_cycle = None
        self._arm_header_deadline()
        self.open_connections[self] = None
        if len(self.open_connections) > self.max_connections:
            self._close_an_idle_connection()

    def _close_an_idle_connection(self) -> None:
        """Make room: close the oldest connection with no request in progress (not this one)."""
        for other in self.open_connections:
            if other is not self and (other.cycle is None or other.cycle.response_complete):
                other.transport.close()
                return

    def data_received(self, data: bytes) -> None:
        # Bytes while no request is in progress begin the next request; body chunks of the current
        # one (or pipelined bytes) do not move its arrival.
        if self._next_arrival is None and (self.cycle is None or self.cycle.response_complete):
            self._next_arrival = time.monotonic()
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and cycle is not self._stamped_cycle and self._next_arrival is not None:
            # The cycle's ASGI task has been created but has not run yet: the handler sees this.
            cycle.scope[ARRIVAL_KEY] = self._next_arrival
            self._stamped_cycle = cycle
            self._next_arrival = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()  # for the next request on this keep-alive connection

    def connection_lost(self, exc) -> None:
        self._disarm_header_deadline()
        self.open_connections.pop(self, None)
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._armed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if self.cycle is not self._armed_cycle or self.transport.is_closing():
            return  # a request's headers arrived in time; its body has --body-timeout-s
        self.transport.write(_json_error(408, "Request Timeout",
                                         f"request headers not received within {self.header_timeout_s:g} s"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_json_error(400, "Bad Request", msg))
        self.transport.close()


def protocol_class(parser: str, header_timeout_s: float, body_limit: int = 8 * 1024 * 1024,
                   max_connections: int = 1024) -> type:
    """The protocol class for ``--http-parser`` (auto: httptools, installed with widthwise). With
    httptools, binary tensor bodies up to ``body_limit`` bytes are read in place (server/direct_body.py)."""
    attributes = {"header_timeout_s": header_timeout_s, "connections_accepted": 0,
                  "max_connections": max_connections, "open_connections": OrderedDict()}
    if parser == "h11":
        return type("WidthWiseH11Protocol", (HeaderDeadline, H11Protocol), attributes)
    http = type("WidthWiseHttpToolsProtocol", (HeaderDeadline, DirectBody, HttpToolsProtocol),
                {**attributes, "body_limit": body_limit})
    return type("WidthWiseBufferedHttpTools", (BufferedAdapter,), {"protocol_class": http, "connections_accepted": 0})
