"""Faults, access control, request ids, CORS and logs."""

import json
import logging
import os
import re
import threading
import time

import pytest
import torch

from policies import Reason
from policies.scheduler import Pending, ScheduledRequest
from server.http.logs import JsonFormatter
from tests.helpers import FaultInjectingRuntime, eventually, png_bytes

PNG = {"content": png_bytes(), "headers": {"content-type": "image/png"}}


def classify(client, **headers):
    return client.post("/v1/classify", content=PNG["content"], headers={**PNG["headers"], **headers})


def test_exception_in_one_batch_fails_only_that_batch(make_client):
    client = make_client(runtime_factory=FaultInjectingRuntime)
    calls = []

    def hook(width, samples):
        calls.append(width)
        if len(calls) == 1:
            raise RuntimeError("injected")

    client.engine.runtime.fault = hook
    r = classify(client)
    assert r.status_code == 500 and r.json() == {"error": "inference failed: RuntimeError"}
    assert classify(client).status_code == 200
    get = client.registry.get_sample_value
    assert get("widthwise_requests_total", {"model": "tiny", "width": "none", "outcome": "error"}) == 1
    assert get("widthwise_requests_total", {"model": "tiny", "width": "1.0", "outcome": "ok"}) == 1


def test_out_of_memory_steps_down_to_a_narrower_width(make_client):
    client = make_client(runtime_factory=FaultInjectingRuntime)

    def hook(width, samples):
        if width > 0.5:
            raise torch.cuda.OutOfMemoryError("simulated")

    client.engine.runtime.fault = hook
    r = classify(client)
    assert r.status_code == 200 and r.json()["width"] == 0.5
    labels = {"model": "tiny", "width": "0.5", "reason": "fallback"}
    assert eventually(lambda: client.registry.get_sample_value("widthwise_width_selections_total", labels), 1) == 1


def test_out_of_memory_at_every_width_is_a_500(make_client):
    client = make_client(runtime_factory=FaultInjectingRuntime)

    def hook(width, samples):
        raise torch.cuda.OutOfMemoryError("simulated")

    client.engine.runtime.fault = hook
    r = classify(client)
    assert r.status_code == 500 and "out of memory even at the narrowest width" in r.json()["error"]
    client.engine.runtime.fault = None
    assert classify(client).status_code == 200


def test_out_of_memory_splits_a_batch_before_narrowing(make_client):
    client = make_client(runtime_factory=FaultInjectingRuntime)
    engine = client.engine
    seen = []

    def hook(width, samples):
        seen.append((width, samples))
        if samples > 2:
            raise torch.cuda.OutOfMemoryError("simulated")

    engine.runtime.fault = hook
    answers = {}
    items = []
    for i in range(4):
        req = ScheduledRequest(100 + i, 1, None, float("inf"), time.monotonic(), None, torch.randn(1, 3, 16, 16))
        items.append(Pending(req, lambda value, i=i: answers.__setitem__(i, value)))
    engine.worker._serve(items, 1.0, Reason.BUDGET)
    assert seen == [(1.0, 4), (1.0, 2), (1.0, 2)]
    assert sorted(answers) == [0, 1, 2, 3]
    assert all(a.width == 1.0 and a.logits.shape == (1, 10) for a in answers.values())


def test_hung_batch_is_bounded_by_the_timeout(make_client):
    client = make_client(batch_timeout_s=0.3, runtime_factory=FaultInjectingRuntime)
    release, returned = threading.Event(), threading.Event()

    def hook(width, samples):
        if not release.is_set():
            release.set()
            time.sleep(1.0)
            returned.set()

    client.engine.runtime.fault = hook
    before = client.engine.profile.predict(1.0, 1)
    start = time.monotonic()
    r = classify(client)
    assert r.status_code == 500 and "did not finish within 0.3 s" in r.json()["error"]
    assert time.monotonic() - start < 0.9
    assert classify(client).status_code == 200  # a fresh worker serves on
    assert returned.wait(5)
    time.sleep(0.1)
    # The stuck worker, once back, exits without answering again or feeding its 1 s into the profile.
    workers = [t for t in threading.enumerate() if t.name == "widthwise-runtime"]
    assert len(workers) == 1
    assert client.engine.profile.predict(1.0, 1) < before + 0.02  # one 1 s sample would add ~0.1 s
    assert classify(client).status_code == 200


def test_bearer_token_guards_inference_and_model_endpoints(make_client, caplog):
    client = make_client(api_token="s3cret-token")
    caplog.set_level(logging.DEBUG)
    assert classify(client).status_code == 401
    r = classify(client, Authorization="Bearer wrong")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert classify(client, Authorization="Bearer s3cret-token").status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v2/models/tiny").status_code == 401
    assert client.get("/v2/models/tiny", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"):
        assert client.get(open_path).status_code == 200, open_path
    assert "s3cret-token" not in caplog.text
    assert "s3cret-token" not in repr(client.app.state.settings)


def test_metrics_can_require_the_token(make_client):
    client = make_client(api_token="t", auth_metrics="on")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer t"}).status_code == 200


def test_request_id_is_echoed_or_generated(make_client):
    client = make_client()
    assert classify(client, **{"X-Request-Id": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = classify(client).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert classify(client, **{"X-Request-Id": "bad id\twith spaces"}).headers["x-request-id"] != "bad id\twith spaces"
    assert client.get("/v1/nope").headers["x-request-id"]


@pytest.mark.slow
def test_cors_is_off_unless_configured(make_client):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    client = make_client()
    assert "access-control-allow-origin" not in client.options("/v1/classify", headers=preflight).headers
    client = make_client(cors_origins="https://app.example")
    r = client.options("/v1/classify", headers=preflight)
    assert r.headers["access-control-allow-origin"] == "https://app.example"


def test_access_log_has_request_id_width_budget_and_outcome(make_client, caplog):
    client = make_client()
    caplog.set_level(logging.INFO, logger="widthwise.access")
    classify(client, **{"X-Request-Id": "req-1", "X-Latency-Budget-Ms": "1000"})
    record = next(r for r in caplog.records if r.name == "widthwise.access")
    fields = record.fields
    assert fields["request_id"] == "req-1" and fields["status"] == 200 and fields["outcome"] == "ok"
    assert fields["width"] == 1.0 and fields["budget_ms"] == 1000.0 and fields["duration_ms"] > 0
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-1" and line["logger"] == "widthwise.access"



def test_oversized_headers_get_431(make_client):
    client = make_client(max_header_bytes=2048)
    r = classify(client, **{"X-Padding": "a" * 4000})
    assert r.status_code == 431 and "headers exceed" in r.json()["error"]
    assert classify(client).status_code == 200


def test_slow_body_is_cut_off_with_408(live_server):
    import socket

    server = live_server("--body-timeout-s", "0.5")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
            + b"\x89PNG"
        )
        start = time.monotonic()
        reply = b""
        while b"not received in time" not in reply:  # headers and body may arrive in separate packets
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.decode().startswith("HTTP/1.1 408") and b"not received in time" in reply, reply
    assert time.monotonic() - start < 5


def test_worker_death_fails_queued_requests_and_turns_readiness(make_client):
    import concurrent.futures

    client = make_client()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")  # a bug in the loop itself, not a failing batch

    client.engine.worker._serve = broken
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: classify(client), range(4)))
    assert sorted(r.status_code for r in replies) in ([500, 503, 503, 503], [500, 500, 503, 503],
                                                      [500, 500, 500, 503], [500, 500, 500, 500])
    assert all("error" in r.json() for r in replies)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"status": "failed",
                                                          "error": "inference worker died: RuntimeError: boom"}
    r = classify(client)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


@pytest.mark.live
def test_empty_api_token_is_a_start_up_error():
    import subprocess
    import sys

    from tests.helpers import REPO

    for token in ("", "   ", "two words"):
        out = subprocess.run([sys.executable, "-m", "server.cli", "serve"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "WIDTHWISE_API_TOKEN": token}, timeout=60)
        assert out.returncode == 2, token
        assert out.stderr.strip().startswith("widthwise serve: error: --api-token (WIDTHWISE_API_TOKEN): the API "
                                             "token is empty"), out.stderr


def test_cors_preflight_is_answered_before_auth_and_errors_carry_cors_headers(make_client):
    client = make_client(api_token="s3cret", cors_origins="https://app.example")
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    r = client.options("/v1/classify", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    denied = classify(client, Origin="https://app.example")
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"
    allowed = classify(client, Origin="https://app.example", Authorization="Bearer s3cret")
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-served-width" in allowed.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("flag,value", [("--max-queue-delay-ms", "inf"), ("--max-queue-delay-ms", "1e300"),
                                        ("--max-queue-delay-ms", "nan"), ("--default-budget-ms", "inf"),
                                        ("--batch-timeout-s", "1e300"), ("--body-timeout-s", "nan"),
                                        ("--reserve-ms", "inf"), ("--queue-limit", "10000000000")])
def test_non_finite_or_absurd_settings_are_refused(flag, value):
    import argparse

    from server.settings import add_serve_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    with pytest.raises(ValueError, match="^" + re.escape(flag)):
        settings_from_args(parser.parse_args([flag, value]))


def test_non_finite_env_setting_is_refused(monkeypatch):
    import argparse

    from server.settings import add_serve_arguments, settings_from_args

    monkeypatch.setenv("WIDTHWISE_MAX_QUEUE_DELAY_MS", "inf")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    with pytest.raises(ValueError, match="WIDTHWISE_MAX_QUEUE_DELAY_MS"):
        settings_from_args(parser.parse_args([]))


def test_text_access_log_escapes_client_controlled_values(make_client, caplog):
    from server.http.logs import TextFormatter

    client = make_client()
    caplog.set_level(logging.INFO, logger="widthwise.access")
    forged = "/v1/x%0D%0A2026-11-28 12:00:00,000 INFO widthwise.access: request status=200%1B[2J%E2%80%A8"
    client.get(forged)
    classify(client, **{"X-Latency-Budget-Ms": "abc\x1b[2Jdef".encode("latin-1")})  # a 400 quoting the header
    lines = [TextFormatter("%(levelname)s %(name)s: %(message)s").format(r)
             for r in caplog.records if r.name == "widthwise.access"]
    assert len(lines) == 2
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line, line
    assert (
        'path="/v1/x\\r\\n2026-11-28 12:00:00,000 INFO widthwise.access: request status=200\\u001b[2J\\u2028"'
        in lines[0]
    )
    assert "path=/v1/classify status=400" in lines[1]


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_silent_or_trickling_connections_get_408_and_are_closed(live_server, parser):
    import socket

    server = live_server("--header-timeout-s", "1", "--http-parser", parser)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as trickle:
        start = time.monotonic()
        trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(3):  # a header line every 0.4 s: never complete within 1 s
            time.sleep(0.4)
            try:
                trickle.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        for sock in (silent, trickle):
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408"), reply
            assert b"content-type: application/json" in reply.lower()
            assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == {"error": "request headers not received within 1 s"}
        assert time.monotonic() - start < 5
    # A prompt client on a keep-alive connection is unaffected, also after waiting less than the deadline.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while not reply.endswith(b'{"status":"alive"}'):  # head and body may come in separate packets
                reply += sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200")
            time.sleep(0.6)


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_malformed_http_gets_a_json_400(live_server, parser):
    import socket

    server = live_server("--http-parser", parser)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\x00\x01 / NOT-HTTP\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in reply.lower()
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == {"error": "Invalid HTTP request received."}
