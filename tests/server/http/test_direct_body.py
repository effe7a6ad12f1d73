"""Binary tensor bodies read by the protocol into their aligned buffer (server/direct_body.py), on a
live server: however the bytes arrive, the logits are the reference's and the connection stays in step."""

import json
import socket
import time

import numpy as np
import pytest
import torch

import models
from server.http.direct_body import BodySink, DirectBody

BATCH = 24  # 24 x 3 x 16 x 16 FP32 = 72 KB: above DirectBody.MIN_DIRECT_BYTES
SHAPE = [BATCH, 3, 16, 16]


@pytest.fixture(scope="module")
def reference_net(tiny_checkpoint):
    return models.load_checkpoint(tiny_checkpoint).net


@pytest.fixture(params=["uvloop", "asyncio"])
def server(live_server, request):
    """uvloop reads into a protocol's buffer when it is no asyncio.Protocol, asyncio when it is a
    BufferedProtocol: both must take the adapter's buffers."""
    return live_server("--max-batch-size", "32", "--body-timeout-s", "2", "--event-loop", request.param)


def binary_request(x: np.ndarray, padding: int = 0, model: str = "tiny", extra: bytes = b"") -> bytes:
    header = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}], "parameters": {"width": 1.0}}
    head = json.dumps(header).encode() + b" " * padding
    body = head + x.tobytes()
    assert len(body) >= DirectBody.MIN_DIRECT_BYTES
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(head)}\r\nContent-Length: {len(body)}\r\n").encode() + extra \
        + b"\r\n" + body


def read_response(sock: socket.socket, pending: bytearray) -> tuple[int, bytes]:
    """One HTTP response from ``sock`` (``pending``: bytes already read past the previous one)."""
    while b"\r\n\r\n" not in pending:
        pending += sock.recv(65536) or b"!"
        assert not pending.endswith(b"!"), f"connection closed: {bytes(pending)[:200]}"
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(
        next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    pending[:] = rest
    while len(pending) < length:
        pending += sock.recv(65536)
    body = bytes(pending[:length])
    del pending[:length]
    return status, body


def logits_of(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["outputs"][0]["data"], dtype=np.float32).reshape(BATCH, 10)


def reference(reference_net, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return reference_net(torch.from_numpy(x), width=1.0).numpy()


@pytest.mark.parametrize("pieces", [1, 5])
def test_bodies_read_in_place_give_the_reference_logits_at_every_header_length(server, reference_net, pieces):
    """In one piece (the parser sees the whole body) and trickled (the event loop reads most of it
    straight into the buffer), with JSON headers that put the tensor at every offset mod 4."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        pending = bytearray()
        for padding in range(4):
            x = np.random.default_rng(padding).standard_normal(SHAPE).astype(np.float32)
            request = binary_request(x, padding)
            head_end = request.index(b"\r\n\r\n") + 4
            cuts = np.linspace(head_end, len(request), pieces + 1).astype(int) if pieces > 1 else [0, len(request)]
            if pieces > 1:
                sock.sendall(request[:head_end])
                time.sleep(0.02)
            for start, end in zip(cuts[:-1], cuts[1:]):
                sock.sendall(request[start:end])
                time.sleep(0.02 if pieces > 1 else 0)
            status, body = read_response(sock, pending)
            assert status == 200, body
            np.testing.assert_allclose(logits_of(body), reference(reference_net, x), rtol=1e-4, atol=1e-5)


def test_a_large_all_json_request_is_read_in_place_too(server, reference_net):
    x = np.random.default_rng(9).standard_normal(SHAPE).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32", "data": x.ravel().tolist()}],
                       "parameters": {"width": 1.0}}).encode()
    assert len(body) >= DirectBody.MIN_DIRECT_BYTES
    request = (f"POST /v2/models/tiny/versions/1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for start in range(0, len(request), 100_000):  # the event loop reads most of it into the buffer
            sock.sendall(request[start:start + 100_000])
            time.sleep(0.02)
        status, answer = read_response(sock, bytearray())
    assert status == 200, answer
    np.testing.assert_allclose(logits_of(answer), reference(reference_net, x), rtol=1e-4, atol=1e-5)


def test_an_answer_before_the_body_leaves_the_connection_in_step(server, reference_net):
    """A 404 (unknown model) is sent before the body is read; the rest of that body must be consumed,
    not parsed as the next request."""
    x = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
    unknown, good = binary_request(x, model="nope"), binary_request(x)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        pending = bytearray()
        sock.sendall(unknown[:5000])
        status, body = read_response(sock, pending)
        assert status == 404, body
        sock.sendall(unknown[5000:])
        sock.sendall(good)
        status, body = read_response(sock, pending)
        assert status == 200, body
        np.testing.assert_allclose(logits_of(body), reference(reference_net, x), rtol=1e-4, atol=1e-5)


def test_pipelined_requests_are_answered_in_order(server, reference_net):
    xs = [np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32) for seed in (1, 2, 3)]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"".join(binary_request(x, padding=i) for i, x in enumerate(xs)))
        pending = bytearray()
        for x in xs:
            status, body = read_response(sock, pending)
            assert status == 200, body
            np.testing.assert_allclose(logits_of(body), reference(reference_net, x), rtol=1e-4, atol=1e-5)


def test_expect_100_continue_gets_its_interim_answer_before_the_body(server, reference_net):
    x = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    request = binary_request(x, extra=b"Expect: 100-continue\r\n")
    head_end = request.index(b"\r\n\r\n") + 4
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request[:head_end])
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        pending = bytearray(interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):])
        sock.sendall(request[head_end:])
        status, body = read_response(sock, pending)
        assert status == 200, body
        np.testing.assert_allclose(logits_of(body), reference(reference_net, x), rtol=1e-4, atol=1e-5)


def test_a_body_cut_off_or_too_slow_costs_only_its_own_request(server, reference_net):
    x = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    request = binary_request(x)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as gone:
        gone.sendall(request[:len(request) // 2])  # then the client goes away
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(request[:len(request) // 2])  # and never the rest: --body-timeout-s 2
        status, body = read_response(slow, bytearray())
        assert status == 408 and json.loads(body) == {"error": "request body not received in time"}
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        status, body = read_response(sock, bytearray())
        assert status == 200, body
        np.testing.assert_allclose(logits_of(body), reference(reference_net, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("offset", [0, 1, 5, 63, 200])
def test_the_tensor_after_the_json_header_starts_on_a_64_byte_boundary(offset):
    sink = BodySink(offset + 4096, offset)
    address = np.frombuffer(sink.view, dtype=np.uint8)[offset:].ctypes.data
    assert address % 64 == 0 and len(sink.view) == offset + 4096
    sink.write(b"a" * 100)
    assert sink.filled == 100 and not sink.complete and bytes(sink.view[:100]) == b"a" * 100


class _StubHttp:
    """What DirectBody needs of uvicorn's protocol, recording what it is told."""

    def connection_made(self, transport) -> None:
        self.completed, self.fed = 0, []

    def data_received(self, data) -> None:
        self.fed.append(bytes(data))

    def on_message_complete(self) -> None:
        self.completed += 1


class _Probe(DirectBody, _StubHttp):
    pass


def test_a_body_answered_early_is_read_and_dropped_not_kept():
    """Once its request is answered (a 503 at the in-flight limit, a 404), the rest of a body is
    still read to its end -- the next request starts after it -- but not into its buffer."""
    from types import SimpleNamespace

    protocol = _Probe()
    protocol.connection_made(None)
    protocol.cycle = SimpleNamespace(response_complete=False)
    sink = BodySink(600_000, 100)
    protocol._sink = sink
    first = protocol.get_buffer(-1)
    assert len(first) == 600_000 and first.obj is sink.view.obj  # straight into the body's buffer
    first[:1000] = b"x" * 1000
    protocol.buffer_updated(1000)
    protocol.cycle.response_complete = True
    for _ in range(3):  # 599,000 bytes left: reads of at most the scratch buffer's size
        scratch = protocol.get_buffer(-1)
        assert sink.view is None and scratch.obj is protocol._read_view.obj
        assert len(scratch) == min(DirectBody.READ_BYTES, 600_000 - sink.filled)
        protocol.buffer_updated(len(scratch))
    assert sink.complete and protocol._sink is None and protocol.completed == 1
    assert protocol.get_buffer(-1).obj is protocol._read_view.obj  # the next request goes to the parser
    protocol.buffer_updated(5)
    assert len(protocol.fed) == 1 and len(protocol.fed[0]) == 5
