"""Tests against a real ``widthwise serve`` process on 127.0.0.1."""

import concurrent.futures
import threading
import time

import httpx2
import numpy as np
import pytest
import torch

import models
from tests.helpers import png_bytes


@pytest.mark.slow
def test_tritonclient_drives_the_v2_endpoint(live_server, tiny_checkpoint):
    import tritonclient.http as triton

    server = live_server()
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        meta = client.get_model_metadata("tiny")
        assert meta["inputs"][0]["shape"] == [-1, 3, 16, 16]
        assert client.get_server_metadata()["name"] == "widthwise"
        net = models.load_checkpoint(tiny_checkpoint).net
        x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
        for binary_in, binary_out, width in (
            (False, False, 0.25),
            (True, True, 0.75),
            (True, False, 1.0),
            (False, True, 0.5),
        ):
            inp = triton.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            out = triton.InferRequestedOutput("logits", binary_data=binary_out)
            result = client.infer("tiny", [inp], outputs=[out], parameters={"width": width})
            served = result.get_response()["parameters"]["width"]
            assert served == width
            with torch.inference_mode():
                expected = net(torch.from_numpy(x), width=served).numpy()
            np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-5)
        # Triton's extensions, as its client calls them.
        assert client.get_model_config("tiny")["max_batch_size"] == 8
        stats = client.get_inference_statistics("tiny")["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 4 and stats["inference_count"] == 12
        assert client.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]
    finally:
        client.close()


@pytest.mark.slow
def test_concurrent_mixed_budgets_wide_get_widest_tight_get_narrower(live_server, synthetic_profile):
    server = live_server("--profile", str(synthetic_profile), "--profile-ewma-alpha", "0", "--max-batch-size", "4")
    data = png_bytes()

    def send(budget_ms: str) -> tuple[str, int, float]:
        r = httpx2.post(server.url + "/v1/classify", content=data, timeout=30,
                        headers={"content-type": "image/png", "X-Latency-Budget-Ms": budget_ms})
        return budget_ms, r.status_code, r.json().get("width")

    budgets = ["5000", "100", "30"] * 8
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, budgets))
    ok = [(b, w) for b, s, w in results if s == 200]
    assert all(s in (200, 503, 504) for _, s, _ in results)
    wide = [w for b, w in ok if b == "5000"]
    tight = [w for b, w in ok if b == "30"]
    assert wide and tight
    assert all(w == 1.0 for w in wide), wide
    assert all(w == 0.25 for w in tight), tight
    assert all(w <= 0.5 for b, w in ok if b == "100")


def _admitted_and_inflight(url: str) -> tuple[float, float]:
    """(requests admitted so far, requests in flight) from the server's own metrics."""
    answered = inflight = 0.0
    for line in httpx2.get(url + "/metrics").text.splitlines():
        if line.startswith("widthwise_requests_total{"):
            answered += float(line.rsplit(" ", 1)[1])
        elif line.startswith("widthwise_inflight_requests{"):
            inflight = float(line.rsplit(" ", 1)[1])
    return answered + inflight, inflight


@pytest.mark.slow
def test_sigterm_drains_queued_requests_and_exits_zero(live_server, slow_checkpoint):
    server = live_server(
        "--checkpoint", str(slow_checkpoint), "--max-batch-size", "1", "--threads", "1", "--profile-repeats", "3"
    )
    data = png_bytes(size=(224, 224))
    statuses: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        try:
            r = httpx2.post(
                server.url + "/v1/classify", content=data, headers={"content-type": "image/png"}, timeout=60
            )
            with lock:
                statuses.append(r.status_code)
        except httpx2.HTTPError as exc:
            with lock:
                failures.append(repr(exc))

    n = 16
    threads = [threading.Thread(target=send) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        admitted, inflight = _admitted_and_inflight(server.url)
        if admitted == n:
            break
    assert admitted == n and inflight >= 2, (admitted, inflight)  # a queue exists when SIGTERM arrives
    code = server.terminate()
    for t in threads:
        t.join(timeout=60)
    assert code == 0
    assert not failures
    assert statuses == [200] * n  # everything admitted before SIGTERM was served


@pytest.mark.slow
def test_env_twins_configure_the_server(live_server):
    server = live_server(env={"WIDTHWISE_MAX_BATCH_SIZE": "2", "WIDTHWISE_POLICY": "fixed:0.5"})
    model = httpx2.get(server.url + "/v1/models").json()["models"][0]
    assert model["policy"] == "fixed:0.5"
    assert set(model["widths"][0]["latency_ms"]) == {"1", "2"}
    r = httpx2.post(server.url + "/v1/classify", content=png_bytes(), headers={"content-type": "image/png"})
    assert r.json()["width"] == 0.5


@pytest.mark.slow
def test_serve_with_bad_policy_exits_with_clear_error(tiny_checkpoint):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--checkpoint", str(tiny_checkpoint), "--policy", "fixed:0.3"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "not one of the model's widths" in proc.stderr
