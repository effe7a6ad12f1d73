"""The load generator's lean HTTP client: what it parses, and how it uses connections."""

import asyncio

from bench.http_client import LeanClient


async def _serve(responses: list[bytes], delay_s: float = 0.0, chunk: int | None = None):
    """A server answering every request (whole body read) with the next of ``responses``;
    returns (server, list of request bodies seen, list of the connections' writers: the objects, not
    their ``id()``s, which a closed and collected connection can hand on to the next one)."""
    bodies, connections = [], []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            await answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client hung up, or the test is over
        writer.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            bodies.append(await reader.readexactly(length))
            await asyncio.sleep(delay_s)
            reply = responses[min(len(bodies), len(responses)) - 1]
            for i in range(0, len(reply), chunk or len(reply)):  # in pieces: the parser must wait for the rest
                writer.write(reply[i:i + (chunk or len(reply))])
                await writer.drain()
                await asyncio.sleep(0)
            if b"Connection: close" in reply:
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, bodies, connections


def _reply(status: int, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nX-Served-Width: 0.5\r\n{extra}\r\n").encode() + body


def test_parses_status_headers_and_body_delivered_in_pieces():
    async def main():
        server, bodies, _ = await _serve([_reply(200, b'{"ok": true}')], chunk=7)
        port = server.sockets[0].getsockname()[1]
        client = LeanClient("127.0.0.1", port, "/v1/classify", b"x" * 100_000, {"X-Latency-Budget-Ms": "20"})
        answer = await client.post()
        client.close()
        server.close()
        return answer, bodies

    answer, bodies = asyncio.run(main())
    assert answer.status == 200 and answer.elapsed_ms > 0
    assert answer.headers["x-served-width"] == "0.5" and answer.body == b'{"ok": true}'
    assert bodies == [b"x" * 100_000]


def test_reuses_idle_connections_and_opens_one_per_request_in_flight():
    async def main():
        server, bodies, connections = await _serve([_reply(200, b"a")], delay_s=0.05)
        port = server.sockets[0].getsockname()[1]
        client = LeanClient("127.0.0.1", port, "/p", b"b", {})
        for _ in range(3):  # one after another: one connection
            await client.post()
        sequential = len(set(connections))
        answers = await asyncio.gather(*(client.post() for _ in range(4)))  # four at once: four connections
        client.close()
        server.close()
        return sequential, len(set(connections)), [a.status for a in answers], len(bodies)

    sequential, total, statuses, served = asyncio.run(main())
    assert sequential == 1
    assert total == 4  # the idle one reused, three more opened
    assert statuses == [200] * 4 and served == 7


def test_connection_limit_makes_requests_wait_for_a_connection():
    async def main():
        server, _, connections = await _serve([_reply(200, b"a")], delay_s=0.05)
        port = server.sockets[0].getsockname()[1]
        client = LeanClient("127.0.0.1", port, "/p", b"b", {}, max_connections=2)
        answers = await asyncio.gather(*(client.post() for _ in range(4)))
        client.close()
        server.close()
        return len(set(connections)), sorted(a.elapsed_ms for a in answers)

    opened, elapsed = asyncio.run(main())
    assert opened == 2
    assert elapsed[-1] >= 90  # the last two waited for a first answer (50 ms) before being sent


def test_a_closed_connection_is_not_reused_and_a_refused_one_is_status_0():
    async def main():
        server, _, connections = await _serve([_reply(503, b"busy", "Connection: close\r\n")])
        port = server.sockets[0].getsockname()[1]
        client = LeanClient("127.0.0.1", port, "/p", b"b", {})
        first = await client.post()
        second = await client.post()
        client.close()
        server.close()
        await server.wait_closed()
        refused = await LeanClient("127.0.0.1", port, "/p", b"b", {}).post()
        return first.status, second.status, len(set(connections)), refused.status

    first, second, opened, refused = asyncio.run(main())
    assert (first, second, opened) == (503, 503, 2)
    assert refused == 0
