import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

import models
from bench.decode import photo_jpeg
from models.transforms import image_to_tensor
from server.runtime import Runtime
from tests.helpers import TINY_ACCURACY, eventually, png_bytes


def expected_scores(checkpoint, data: bytes, width: float) -> torch.Tensor:
    loaded = models.load_checkpoint(checkpoint)
    net, spec = loaded.net, loaded.card.input
    x = image_to_tensor(Image.open(io.BytesIO(data)), spec.size, spec.mean, spec.std)
    with torch.inference_mode():
        return torch.softmax(net(x[None], width=width)[0], 0)


def test_classify_raw_png_returns_contract_and_reference_scores(make_client, tiny_checkpoint):
    client = make_client()
    data = png_bytes()
    r = client.post("/v1/classify?top_k=3", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "width", "reason", "predictions", "timing_ms", "budget_ms", "deadline_met"}
    assert (
        body["model"] == "tiny" and body["width"] == 1.0 and body["budget_ms"] is None and body["deadline_met"] is True
    )
    assert body["reason"] == "no_budget"  # the policy's reason, as in the reason metric label
    assert r.headers["x-served-width"] == "1.0"  # spelled as in metric labels and logs
    assert r.headers["x-width-reason"] == "no_budget"
    assert r.headers["server-timing"].startswith("queue;dur=")
    timing = dict(entry.split(";dur=") for entry in r.headers["server-timing"].split(", "))
    assert set(timing) == {"queue", "inference", "total", "input"}
    assert float(timing["input"]) + float(timing["queue"]) + float(timing["inference"]) <= float(timing["total"])
    assert set(body["timing_ms"]) == {"queue", "inference", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"]
    preds = body["predictions"]
    assert len(preds) == 3
    reference = expected_scores(tiny_checkpoint, data, 1.0)
    top = reference.topk(3)
    assert [p["index"] for p in preds] == top.indices.tolist()
    assert [p["label"] for p in preds] == [f"class{i}" for i in top.indices.tolist()]
    np.testing.assert_allclose([p["score"] for p in preds], top.values.numpy(), rtol=1e-4)


@pytest.mark.parametrize("fmt,media", [("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("PNG", "image/png")])
def test_classify_accepts_each_image_format(make_client, fmt, media):
    client = make_client()
    r = client.post("/v1/classify", content=png_bytes(fmt=fmt), headers={"content-type": media})
    assert r.status_code == 200, r.text


def test_classify_multipart_and_grayscale(make_client, tiny_checkpoint):
    client = make_client()
    data = png_bytes(size=(40, 30), mode="L")
    r = client.post("/v1/classify", files={"image": ("digit.png", data, "image/png")}, headers={"X-Width": "0.5"})
    assert r.status_code == 200, r.text
    assert r.json()["width"] == 0.5
    reference = expected_scores(tiny_checkpoint, data, 0.5)
    assert r.json()["predictions"][0]["index"] == int(reference.argmax())


def test_pinned_width_is_served(make_client):
    client = make_client()
    for width in ("0.25", "0.75", "1"):
        r = client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "X-Width": width})
        assert r.status_code == 200 and r.json()["width"] == float(width)
        assert r.headers["x-served-width"] == repr(float(width))


@pytest.mark.parametrize("budget_ms,width", [("5000", 1.0), ("600", 1.0), ("300", 0.75), ("100", 0.5), ("30", 0.25)])
def test_budget_picks_widest_width_that_fits_the_profile(make_client, synthetic_profile, budget_ms, width):
    # The policy's choice is under test; a stalled test machine (789 ms once, on a busy clean clone) would
    # turn the 30 ms case into reject mode's 504 for a late answer, which tests/server/test_deadlines.py covers.
    client = make_client(profile=synthetic_profile, admission="best_effort")
    r = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "X-Latency-Budget-Ms": budget_ms}
    )
    assert r.status_code == 200, r.text
    assert r.json()["width"] == width
    assert r.json()["budget_ms"] == float(budget_ms)


def test_budget_below_narrowest_width_is_504_and_counted_rejected(make_client, synthetic_profile):
    client = make_client(profile=synthetic_profile)
    r = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "X-Latency-Budget-Ms": "5"}
    )
    assert r.status_code == 504
    assert r.json()["error"] == "latency budget 5 ms is below the fastest possible service time, 10 ms at width 0.25"
    assert (
        client.registry.get_sample_value(
            "widthwise_requests_total", {"model": "tiny", "width": "none", "outcome": "rejected"}
        )
        == 1
    )


def test_best_effort_admission_serves_narrowest_and_reports_missed_deadline(make_client, synthetic_profile):
    client = make_client(profile=synthetic_profile, admission="best_effort")
    r = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "X-Latency-Budget-Ms": "5"}
    )
    assert r.status_code == 200
    assert r.json()["width"] == 0.25
    body = r.json()
    # Whether 5 ms was met depends on the wall clock; that the flag tells the truth does not.
    assert body["deadline_met"] is (body["timing_ms"]["total"] <= body["budget_ms"])
    outcome = "ok" if body["deadline_met"] else "deadline_missed"
    assert (
        client.registry.get_sample_value(
            "widthwise_requests_total", {"model": "tiny", "width": "0.25", "outcome": outcome}
        )
        == 1
    )


def test_default_budget_applies_to_requests_without_one(make_client, synthetic_profile):
    client = make_client(profile=synthetic_profile, default_budget_ms=100)
    r = client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png"})
    assert r.json()["width"] == 0.5 and r.json()["budget_ms"] is None


def test_models_endpoint_lists_widths_costs_accuracy_and_profile(make_client):
    client = make_client()
    model = client.get("/v1/models").json()["models"][0]
    assert model["name"] == "tiny" and model["arch"] == "s_convnet6" and model["ready"] is True
    assert [w["width"] for w in model["widths"]] == [0.25, 0.5, 0.75, 1.0]
    assert [w["expected_accuracy"] for w in model["widths"]] == list(TINY_ACCURACY.values())
    macs = [w["macs"] for w in model["widths"]]
    assert macs == sorted(macs) and macs[0] > 0
    for w in model["widths"]:
        assert set(w["latency_ms"]) == {"1", "2", "4", "8"}
        assert all(v > 0 for v in w["latency_ms"].values())


def test_health_and_readiness(make_client):
    client = make_client()
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


class RuntimeThatFailsToExport(Runtime):
    @classmethod
    def from_config(cls, *args, **kwargs):
        raise RuntimeError("export failed: out of memory (injected)")


def test_readiness_reports_a_failed_start_up(make_client):
    client = make_client(wait=False, runtime_factory=RuntimeThatFailsToExport)
    client.engine.wait_ready(30)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "failed" and "injected" in r.json()["error"]
    assert client.get("/v2/health/ready").status_code == 503
    r = client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_draining_engine_refuses_new_work_with_503(make_client):
    client = make_client()
    client.engine.begin_drain()
    assert client.get("/readyz").json()["status"] == "draining"
    r = client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 503 and "retry-after" in r.headers


def test_metrics_after_known_traffic(make_client):
    client = make_client()
    for _ in range(2):
        client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "X-Width": "0.5"})
    client.post("/v1/classify", content=b"not an image", headers={"content-type": "image/png"})
    get = client.registry.get_sample_value
    assert get("widthwise_requests_total", {"model": "tiny", "width": "0.5", "outcome": "ok"}) == 2
    assert get("widthwise_requests_total", {"model": "tiny", "width": "none", "outcome": "bad_request"}) == 1
    assert get("widthwise_expected_correct_total", {"model": "tiny"}) == pytest.approx(2 * 0.95)
    # the worker answers first and records the batch after: wait for the second batch's record
    assert eventually(lambda: get("widthwise_batch_size_count", {"model": "tiny", "width": "0.5"}), 2) == 2
    assert get("widthwise_width_selections_total", {"model": "tiny", "width": "0.5", "reason": "pinned"}) == 2
    assert get("widthwise_queue_wait_seconds_count", {"model": "tiny"}) == 2
    assert get("widthwise_request_duration_seconds_count", {"model": "tiny", "width": "0.5"}) == 2
    assert (
        get(
            "widthwise_model_info",
            {"model": "tiny", "arch": "s_convnet6", "widths": "0.25,0.5,0.75,1.0", "device": "cpu"},
        )
        == 1
    )
    text = client.get("/metrics").text
    assert 'widthwise_requests_total{model="tiny",outcome="ok",width="0.5"} 2.0' in text


@pytest.mark.slow
def test_default_server_classifies_the_shipped_examples():
    """``widthwise serve`` with no checkpoint: the embedded digits model reads the README's example PNGs."""
    from pathlib import Path

    from fastapi.testclient import TestClient

    from server.app import build_app
    from server.settings import Settings
    from tests.helpers import REPO, wait_ready

    examples = sorted(Path(REPO / "examples").glob("digit_*.png"))
    assert len(examples) == 10
    with TestClient(build_app(Settings(profile_repeats=3))) as client:
        wait_ready(client)
        model = client.get("/v1/models").json()["models"][0]
        assert model["name"] == "digits_s_mobilenet_v2" and model["arch"] == "s_mobilenet_v2_cifar"
        correct = 0
        for path in examples:
            for width in ("0.35", "1"):
                r = client.post(
                    "/v1/classify", content=path.read_bytes(), headers={"content-type": "image/png", "X-Width": width}
                )
                assert r.status_code == 200
                correct += r.json()["predictions"][0]["label"] == path.stem.split("_")[1]
        assert correct >= 19  # 20 classifications of held-out digits


@pytest.mark.parametrize("reserve_ms,width", [(0, 0.75), (20, 0.5)])
def test_reserve_keeps_budget_for_the_reply(make_client, synthetic_profile, reserve_ms, width):
    # 0.75 needs 200 ms (+10% margin = 220 ms): it fits a 230 ms budget only if nothing is reserved.
    client = make_client(profile=synthetic_profile, reserve_ms=reserve_ms)
    r = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "X-Latency-Budget-Ms": "230"}
    )
    assert r.status_code == 200 and r.json()["width"] == width


def test_learnt_reserve_follows_the_handlers_own_time(make_client):
    engine = make_client().engine
    # Only the handler's time here: stop the event-loop lag probe (tested in test_engine.py) and zero it.
    engine._lag_watch.get_loop().call_soon_threadsafe(engine._lag_watch.cancel)
    time.sleep(0.05)
    engine.deadlines.note_loop_lag(0.0)
    assert engine.deadlines.reserve_s() < 0.002
    for _ in range(200):
        engine.deadlines.note_overhead(0.010)
    assert engine.deadlines.reserve_s() == pytest.approx(0.011, rel=0.01)
    assert engine.deadlines.reserve_s(budget_s=0.020) == pytest.approx(0.005)  # capped at a quarter of the budget


def test_a_huge_learnt_reserve_cannot_lock_the_server_into_refusing(make_client, synthetic_profile):
    client = make_client(profile=synthetic_profile)
    for _ in range(500):  # e.g. an event loop that was saturated for a while
        client.engine.deadlines.note_overhead(10.0)
    r = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "X-Latency-Budget-Ms": "100"}
    )
    assert r.status_code == 200 and r.json()["width"] == 0.5  # planned with 75 ms: 0.5 needs 55 ms


def test_inference_routes_are_answered_before_fastapis_stack(make_client):
    """The hot routes (server/hot_path.py) never enter FastAPI's middleware stack or router, yet stay
    documented, keep 405 for other methods, carry the request id, and their errors still go through
    the app's JSON handlers."""
    client = make_client()
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v1/classify"] and "post" in paths["/v2/models/{name}/versions/{model_version}/infer"]
    assert client.get("/v1/classify").status_code == 405  # other methods: FastAPI's router, as before

    def stack_not_used(scope, receive, send):
        raise AssertionError(f"{scope['method']} {scope['path']} went through FastAPI's stack")

    client.app.middleware_stack = stack_not_used
    r = client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "X-Request-Id": "abc-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-1" and "x-served-width" in r.headers
    r = client.post("/v2/models/tiny/versions/7/infer", json={})
    assert r.status_code == 404 and r.json() == {"error": "model 'tiny' has no version '7'"}
    assert r.headers["content-type"] == "application/json" and r.headers["x-request-id"]
    assert client.get("/v1/models").status_code == 500  # every other path still goes through it


def test_hot_routes_tell_middleware_their_route_as_fastapi_does(make_client):
    """Instrumentation (OpenTelemetry, Prometheus instrumentators) names a request by
    ``scope["route"].path``; the inference routes must carry it past FastAPI's router too."""
    client = make_client()
    seen = []

    def recorder(app):
        async def middleware(scope, receive, send):
            await app(scope, receive, send)
            route = scope.get("route")
            seen.append((scope["path"], getattr(route, "path", None)))
        return middleware

    from starlette.middleware import Middleware

    client.app.user_middleware.insert(0, Middleware(recorder))  # the app has started: both stacks are rebuilt
    client.app.middleware_stack, client.app.hot_routes._stack = None, None
    client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png"})
    client.post("/v2/models/tiny/versions/1/infer", json={})
    client.get("/v1/models")
    assert seen == [("/v1/classify", "/v1/classify"),
                    ("/v2/models/tiny/versions/1/infer", "/v2/models/{name}/versions/{model_version}/infer"),
                    ("/v1/models", "/v1/models")]


def test_both_request_paths_share_one_inflight_limit(make_client):
    """FastAPI's stack and the hot routes each build the middleware, but the in-flight count is one."""
    from server.http.limits import InflightLimitMiddleware

    client = make_client()
    client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png"})  # builds the hot stack

    def gates(app):
        found = []
        while app is not None:
            if isinstance(app, InflightLimitMiddleware):
                found.append(app.gate)
            app = getattr(app, "app", None)
        return found

    fastapi_gates, hot_gates = gates(client.app.middleware_stack), gates(client.app.hot_routes._stack)
    assert len(fastapi_gates) == len(hot_gates) == 1 and fastapi_gates[0] is hot_gates[0]


def test_jpeg_draft_decodes_close_to_a_full_decode_and_leaves_png_alone():
    from server.api.codecs import decode_image

    args = (1 << 24, 16, (0.5,) * 3, (0.5,) * 3, 3)
    jpeg = photo_jpeg(1024, 768)
    full, draft = decode_image(jpeg, "image/jpeg", *args), decode_image(jpeg, "image/jpeg", *args, jpeg_draft=True)
    assert full.shape == draft.shape == (1, 3, 16, 16)
    assert not np.array_equal(full, draft)  # really decoded at a reduced scale
    assert np.abs(full - draft).mean() < 0.05  # values span [-1, 1]
    png = png_bytes()
    assert np.array_equal(decode_image(png, "image/png", *args), decode_image(png, "image/png", *args, jpeg_draft=True))


def test_jpeg_draft_setting_reaches_the_decoder(make_client):
    jpeg = photo_jpeg(1024, 768)
    scores = {}
    for flag in ("off", "on"):
        r = make_client(jpeg_draft=flag).post(
            "/v1/classify?top_k=10", content=jpeg, headers={"content-type": "image/jpeg"}
        )
        assert r.status_code == 200
        scores[flag] = {p["index"]: p["score"] for p in r.json()["predictions"]}
    assert scores["on"] != scores["off"]
    assert max(abs(scores["on"][i] - scores["off"][i]) for i in scores["off"]) < 0.1


def test_start_up_finishing_during_a_drain_does_not_turn_ready(make_client):
    client = make_client(wait=False)
    client.engine.begin_drain()  # SIGTERM while still exporting and profiling
    client.engine.wait_ready(60)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"status": "draining"}
    assert client.get("/v1/models").json()["models"][0]["state"] == "draining"


# -- several images per request --------------------------------------------------------------


def _metric_value(client, name: str, **labels) -> float:
    return client.registry.get_sample_value(name, labels) or 0.0


def test_repeated_multipart_images_are_answered_in_order_and_batched(make_client, tiny_checkpoint):
    client = make_client(max_batch_size=8)
    images = [png_bytes(seed=i) for i in range(5)]
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    r = client.post("/v1/classify?top_k=2", files=files, headers={"X-Width": "0.5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "results", "timing_ms", "budget_ms", "deadline_met"}
    assert len(body["results"]) == 5 and body["deadline_met"] is True
    for data, result in zip(images, body["results"]):  # in the order sent, each its own answer
        assert result["width"] == 0.5 and result["reason"] == "pinned"
        top = expected_scores(tiny_checkpoint, data, 0.5).topk(2)
        assert [p["index"] for p in result["predictions"]] == top.indices.tolist()
        np.testing.assert_allclose([p["score"] for p in result["predictions"]], top.values.numpy(), rtol=1e-4)
    assert r.headers["x-served-width"] == "0.5, 0.5, 0.5, 0.5, 0.5"
    assert r.headers["x-width-reason"] == ", ".join(["pinned"] * 5)
    # Five requests to the engine (counted one by one), batched together rather than one by one.
    assert _metric_value(client, "widthwise_requests_total", model="tiny", width="0.5", outcome="ok") == 5
    assert eventually(lambda: _metric_value(client, "widthwise_batch_size_sum", model="tiny", width="0.5"), 5) == 5
    assert _metric_value(client, "widthwise_batch_size_count", model="tiny", width="0.5") < 5


def test_json_base64_images_single_list_and_data_url(make_client, tiny_checkpoint):
    import base64

    client = make_client()
    images = [png_bytes(seed=i) for i in range(3)]
    encoded = [base64.b64encode(data).decode() for data in images]
    r = client.post("/v1/classify?top_k=1", json={"images": encoded})
    assert r.status_code == 200, r.text
    indices = [res["predictions"][0]["index"] for res in r.json()["results"]]
    assert indices == [int(expected_scores(tiny_checkpoint, d, 1.0).argmax()) for d in images]
    one = client.post("/v1/classify?top_k=1", json={"image": "data:image/png;base64," + encoded[1]})
    assert one.status_code == 200 and one.json()["predictions"][0]["index"] == indices[1]
    assert "results" not in one.json()  # a single image is answered as before
    listed = client.post("/v1/classify", json={"images": encoded[:1]})
    assert listed.status_code == 200 and len(listed.json()["results"]) == 1  # a list is answered as a list
    jpeg = client.post("/v1/classify", json={"image": base64.b64encode(png_bytes(fmt="JPEG")).decode()})
    assert jpeg.status_code == 200  # media type sniffed from the bytes


@pytest.mark.parametrize("body,status,words", [
    ({"images": []}, 400, "non-empty list"),
    ({"images": "abc"}, 400, "non-empty list"),
    ({"image": "not base64!"}, 400, "not valid base64"),
    ({"image": 5}, 400, "base64 string"),
    ({"images": ["aGVsbG8="]}, 415, "unsupported media type"),
    ({"image": "x", "images": ["x"]}, 400, '"image"'),
    ([1, 2], 400, '"image"'),
])
def test_bad_json_image_bodies_are_4xx(make_client, body, status, words):
    client = make_client()
    r = client.post("/v1/classify", json=body)
    assert r.status_code == status and words in r.json()["error"], r.text
    assert _metric_value(client, "widthwise_requests_total", model="tiny", width="none", outcome="bad_request") == 1


def test_more_images_than_the_limit_is_413(make_client):
    import base64

    client = make_client(max_images_per_request=2)
    files = [("image", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(3)]
    r = client.post("/v1/classify", files=files)
    assert r.status_code == 413 and "more than 2 images" in r.json()["error"]
    r = client.post("/v1/classify", json={"images": [base64.b64encode(png_bytes()).decode()] * 3})
    assert r.status_code == 413 and "limit of 2" in r.json()["error"]
    assert client.post("/v1/classify", files=files[:2]).status_code == 200


def test_one_bad_image_among_several_fails_the_request_before_any_inference(make_client):
    client = make_client()
    files = [("image", ("0.png", png_bytes(), "image/png")), ("image", ("1.png", b"garbage", "image/png"))]
    r = client.post("/v1/classify", files=files)
    assert r.status_code == 400 and "cannot decode image" in r.json()["error"]
    assert _metric_value(client, "widthwise_batch_size_count", model="tiny", width="1.0") == 0
