"""Exactly one outcome per request in widthwise_requests_total, matching the status the client got."""

from __future__ import annotations

import json
import socket
import time

import httpx2

from tests.helpers import FaultInjectingRuntime, eventually, png_bytes

STATUS_OUTCOMES = {
    200: ("ok", "deadline_missed"),
    400: ("bad_request",),
    413: ("bad_request",),
    415: ("bad_request",),
    422: ("bad_request",),
    500: ("error",),
    503: ("rejected",),
    504: ("rejected",),
}


def outcome_totals(registry) -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in registry.collect():
        if family.name == "widthwise_requests":
            for sample in family.samples:
                if sample.name == "widthwise_requests_total":
                    outcome = sample.labels["outcome"]
                    totals[outcome] = totals.get(outcome, 0) + sample.value
    return totals


def test_mixed_workload_counts_one_outcome_per_request(make_client, synthetic_profile):
    client = make_client(profile=synthetic_profile, max_image_pixels=200 * 200, runtime_factory=FaultInjectingRuntime)
    calls = []

    def fail_every_third_batch(width, samples):
        calls.append(width)
        if len(calls) % 3 == 0:
            raise RuntimeError("injected device fault")

    client.engine.runtime.fault = fail_every_third_batch
    png = {"content-type": "image/png"}
    v2_input = {"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}
    requests = [
        ("native", png_bytes(), png),
        ("native", png_bytes(), {**png, "X-Latency-Budget-Ms": "5"}),  # below the narrowest width: 504
        ("native", b"not an image", png),
        ("native", png_bytes(), {**png, "X-Width": "0.3"}),
        ("native", png_bytes(size=(300, 300)), png),
        ("native", png_bytes(), {"content-type": "text/plain"}),
        ("v2", {"inputs": [v2_input], "outputs": [{"name": "probs"}]}, None),  # unknown output
        ("v2", {"inputs": [v2_input], "outputs": 5}, None),
        ("v2", {"inputs": [v2_input]}, None),
        ("v2", {"inputs": [v2_input], "parameters": {"timeout": 1000}}, None),  # 1 ms: 504
    ] * 3
    statuses = []
    for kind, body, headers in requests:
        if kind == "native":
            r = client.post("/v1/classify", content=body, headers=headers)
        else:
            r = client.post(
                "/v2/models/tiny/infer", content=json.dumps(body), headers={"content-type": "application/json"}
            )
        statuses.append(r.status_code)
    assert set(statuses) >= {200, 400, 413, 415, 422, 500, 504}, statuses
    expected: dict[str, int] = {}
    for status in statuses:
        outcome = STATUS_OUTCOMES[status][0]
        expected[outcome] = expected.get(outcome, 0) + 1
    totals = outcome_totals(client.registry)
    assert sum(totals.values()) == len(requests)
    assert totals.get("error", 0) == statuses.count(500)
    assert totals.get("rejected", 0) == statuses.count(503) + statuses.count(504)
    assert totals.get("bad_request", 0) == sum(statuses.count(s) for s in (400, 413, 415, 422))
    assert totals.get("ok", 0) + totals.get("deadline_missed", 0) == statuses.count(200)


def test_client_that_disconnects_mid_body_is_a_bad_request_without_traceback(live_server):
    server = live_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                     + png_bytes()[:100])
        time.sleep(0.2)
    def requests(outcome: str) -> float:
        metrics = httpx2.get(server.url + "/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("widthwise_requests_total") and f'outcome="{outcome}"' in line)

    assert eventually(lambda: requests("bad_request"), 1.0) == 1.0
    assert requests("error") == 0
    log = server.output()
    assert "Traceback" not in log and "status=499 " in log and "outcome=bad_request" in log
