import json

import numpy as np
import pytest
import torch

import models
from tests.helpers import eventually

SHAPE = [2, 3, 16, 16]


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture(scope="module")
def reference_net(tiny_checkpoint):
    return models.load_checkpoint(tiny_checkpoint).net


def _infer(client, body, **kw):
    return client.post("/v2/models/tiny/infer", json=body, **kw)


def _tensor(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def test_server_and_model_metadata(client):
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "parameters", "model_configuration",
                                                      "statistics", "model_repository"]
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny" and meta["versions"] == ["1"]
    # every datatype the server accepts for the one input, FP32 (the default) first
    assert meta["inputs"] == [
        {"name": "input", "datatype": d, "shape": [-1, 3, 16, 16]} for d in ("FP32", "FP16", "UINT8")
    ]
    assert meta["parameters"] == {"widths": [0.25, 0.5, 0.75, 1.0], "policy": "max-width"}
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/tiny/versions/1").status_code == 200
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/models/tiny/versions/7").status_code == 404
    assert client.get("/v2/models/other/ready").status_code == 404


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.0])
def test_json_infer_equals_reference_logits(client, reference_net, width):
    x = _tensor()
    r = _infer(
        client,
        {
            "id": "abc",
            "inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32", "data": x.ravel().tolist()}],
            "parameters": {"width": width},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == "tiny" and body["parameters"]["width"] == width
    out = body["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [2, 10] and out["datatype"] == "FP32"
    with torch.inference_mode():
        expected = reference_net(torch.from_numpy(x), width=width).numpy()
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(2, 10), expected, rtol=1e-4, atol=1e-5)


def test_binary_in_and_out(client, reference_net):
    x = _tensor(1)
    header = {
        "inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        "parameters": {"width": 0.5},
    }
    head = json.dumps(header).encode()
    r = client.post(
        "/v2/models/tiny/infer",
        content=head + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    logits = np.frombuffer(r.content[n:], dtype="<f4").reshape(2, 10)
    with torch.inference_mode():
        np.testing.assert_allclose(logits, reference_net(torch.from_numpy(x), width=0.5).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padding", [0, 1, 2, 3])
@pytest.mark.parametrize("chunked", [False, True])
def test_binary_input_at_any_offset_and_chunked(client, reference_net, padding, chunked):
    """The tensor is used in place when the body lands aligned; every header length (and a
    chunked body, whose size is unknown up front) must give the same logits."""
    x = _tensor(3)
    header = {
        "inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"width": 1.0},
    }
    head = json.dumps(header).encode() + b" " * padding
    body = head + x.tobytes()
    content = iter([body[:100], body[100:777], body[777:]]) if chunked else body
    r = client.post(
        "/v2/models/tiny/infer", content=content, headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert r.status_code == 200, r.text
    with torch.inference_mode():
        expected = reference_net(torch.from_numpy(x), width=1.0).numpy()
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, 10), expected, rtol=1e-4, atol=1e-5)


def test_uint8_and_fp16_inputs(client, reference_net):
    pixels = np.random.default_rng(2).integers(0, 256, SHAPE, dtype=np.uint8)
    r = _infer(
        client,
        {
            "inputs": [{"name": "input", "shape": SHAPE, "datatype": "UINT8", "data": pixels.ravel().tolist()}],
            "parameters": {"width": 1.0},
        },
    )
    assert r.status_code == 200, r.text
    normalised = (pixels.astype(np.float32) / 255 - 0.5) / 0.5
    with torch.inference_mode():
        expected = reference_net(torch.from_numpy(normalised), width=1.0).numpy()
    np.testing.assert_allclose(
        np.asarray(r.json()["outputs"][0]["data"]).reshape(2, 10), expected, rtol=1e-4, atol=1e-5
    )
    half = _tensor(3).astype(np.float16)
    r = _infer(
        client, {"inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP16", "data": half.ravel().tolist()}]}
    )
    assert r.status_code == 200


def test_budget_from_parameters_triton_timeout_and_headers(make_client, synthetic_profile):
    client = make_client(profile=synthetic_profile)
    x = _tensor()[:1]
    base = {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = _infer(client, {**base, "parameters": {"latency_budget_ms": 300}})
    assert r.json()["parameters"]["width"] == 0.75
    r = _infer(client, {**base, "parameters": {"timeout": 100_000}})  # microseconds
    assert r.json()["parameters"]["width"] == 0.5
    r = _infer(client, base, headers={"X-Latency-Budget-Ms": "30"})
    assert r.json()["parameters"]["width"] == 0.25
    assert r.headers["x-served-width"] == "0.25"


BAD = {
    "wrong shape": (
        {"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}]},
        400,
    ),
    "wrong rank": ({"inputs": [{"name": "input", "shape": [3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]}, 400),
    "bad datatype": ({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "BYTES", "data": ["a"]}]}, 400),
    "too few values": (
        {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 10}]},
        400,
    ),
    "non numeric data": (
        {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": ["x"] * 768}]},
        400,
    ),
    "missing inputs": ({"parameters": {}}, 400),
    "two inputs": ({"inputs": [{}, {}]}, 400),
    "bad width": (
        {
            "inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}],
            "parameters": {"width": 0.3},
        },
        422,
    ),
    "bad budget": (
        {
            "inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}],
            "parameters": {"latency_budget_ms": -1},
        },
        422,
    ),
    "nan input": (
        {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [float("nan")] * 768}]},
        400,
    ),
    "batch over max": (
        {"inputs": [{"name": "input", "shape": [9, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 9 * 768}]},
        400,
    ),
    "unknown output": (
        {
            "inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}],
            "outputs": [{"name": "probs"}],
        },
        400,
    ),
}


GOOD_INPUT = {"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}
# Malformed in ways that used to reach the model or raise TypeError/OverflowError (500): (body, status, error).
MALFORMED = {
    "outputs not a list": ({"inputs": [GOOD_INPUT], "outputs": 5}, 400, "invalid inference request: outputs:"),
    "output parameters not an object": (
        {"inputs": [GOOD_INPUT], "outputs": [{"name": "logits", "parameters": 3}]},
        400,
        "invalid inference request: outputs.0.parameters:",
    ),
    "binary_data_output a string": (
        {"inputs": [GOOD_INPUT], "parameters": {"binary_data_output": "false"}},
        400,
        "invalid inference request: parameters.binary_data_output:",
    ),
    "width true": ({"inputs": [GOOD_INPUT], "parameters": {"width": True}}, 400, "width must be a number, got True"),
    "huge integer width": (
        '{"inputs": [INPUT], "parameters": {"width": ' + "9" * 401 + "}}",
        422,
        "width is out of range",
    ),
    "huge integer budget": (
        '{"inputs": [INPUT], "parameters": {"latency_budget_ms": ' + "9" * 401 + "}}",
        422,
        "latency_budget_ms is out of range",
    ),
    "huge integer timeout": (
        '{"inputs": [INPUT], "parameters": {"timeout": ' + "9" * 401 + "}}",
        422,
        "timeout is out of range",
    ),
    "underscore width": ({"inputs": [GOOD_INPUT], "parameters": {"width": "0.2_5"}}, 400, "width must be a number"),
    "underscore budget": (
        {"inputs": [GOOD_INPUT], "parameters": {"latency_budget_ms": "5_0"}},
        400,
        "latency_budget_ms must be a number of milliseconds",
    ),
    "deeply nested": ("[" * 50_000 + "]" * 50_000, 400, "nested too deeply"),
    "nested data of the wrong shape": (
        {"inputs": [dict(GOOD_INPUT, data=[[0.0] * 256] * 3)]},
        400,
        "data of shape [3, 256] matches neither shape [1, 3, 16, 16]",
    ),
    "shape not integers": (
        {"inputs": [dict(GOOD_INPUT, shape=[1, 3, 16, "16"])]},
        400,
        "invalid inference request: inputs.0.shape.3:",
    ),
    "id not a string": ({"inputs": [GOOD_INPUT], "id": {"x": 1}}, 400, "invalid inference request: id:"),
    "parameters not an object": (
        {"inputs": [GOOD_INPUT], "parameters": [1]},
        400,
        "invalid inference request: parameters:",
    ),
    "unknown output": ({"inputs": [GOOD_INPUT], "outputs": [{"name": "probs"}]}, 400, "unknown output 'probs'"),
    "non-ASCII digit width": (
        {"inputs": [GOOD_INPUT], "parameters": {"width": "\u0661"}},
        400,
        "width must be a number",
    ),
    "FP16 out of range": (
        {"inputs": [dict(GOOD_INPUT, datatype="FP16", data=[1e10] * 768)]},
        400,
        "data out of range for FP16",
    ),
    "UINT8 out of range": (
        {"inputs": [dict(GOOD_INPUT, datatype="UINT8", data=[300] * 768)]},
        400,
        "data must be numbers of type UINT8",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_v2_requests_are_4xx(client, name):
    body, status = BAD[name]
    raw = json.dumps(body, allow_nan=True)
    r = client.post("/v2/models/tiny/infer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]
    good = {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]}
    assert _infer(client, good).status_code == 200


@pytest.mark.parametrize("params", [{"timeout": ""}, {"latency_budget_ms": ""}, {"width": ""}])
def test_empty_parameters_mean_absent(client, params):
    r = _infer(client, {"inputs": [GOOD_INPUT], "parameters": params})
    assert r.status_code == 200 and r.json()["parameters"]["budget_ms"] is None


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_v2_request_is_refused_before_the_model_runs_and_counted_once(client, name):
    body, status, error = MALFORMED[name]
    raw = body.replace("INPUT", json.dumps(GOOD_INPUT)) if isinstance(body, str) else json.dumps(body)
    r = client.post("/v2/models/tiny/infer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert error in r.json()["error"], r.json()["error"]
    get = client.registry.get_sample_value
    assert get("widthwise_requests_total", {"model": "tiny", "width": "none", "outcome": "bad_request"}) == 1
    for outcome in ("ok", "error", "rejected", "deadline_missed"):
        for width in ("none", "0.25", "0.5", "0.75", "1.0"):
            assert not get("widthwise_requests_total", {"model": "tiny", "width": width, "outcome": outcome})
    assert get("widthwise_batch_size_count", {"model": "tiny", "width": "1.0"}) is None  # the model never ran
    assert _infer(client, {"inputs": [GOOD_INPUT]}).status_code == 200


def test_nested_data_in_the_request_shape_is_accepted(client, reference_net):
    x = _tensor()
    r = _infer(client, {"inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32", "data": x.tolist()}],
                        "parameters": {"width": "0.5"}})
    assert r.status_code == 200
    with torch.inference_mode():
        expected = reference_net(torch.from_numpy(x), width=0.5)
    assert np.allclose(r.json()["outputs"][0]["data"], expected.numpy().ravel(), atol=1e-4)


def test_large_json_body_is_parsed_off_the_event_loop(client, monkeypatch):
    from server.api import kserve, v2_service

    calls = []
    original = kserve.run_in_threadpool

    async def recording(fn, *args, **kwargs):
        calls.append(fn.__name__)
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(kserve, "run_in_threadpool", recording)
    monkeypatch.setattr(v2_service, "run_in_threadpool", recording)
    small = {"inputs": [GOOD_INPUT]}
    assert _infer(client, small).status_code == 200 and calls == []
    big = {"inputs": [dict(GOOD_INPUT, shape=[8, 3, 16, 16], data=[0.123456789] * 8 * 768)]}
    assert len(json.dumps(big)) > kserve.INLINE_PARSE_BYTES
    assert _infer(client, big).status_code == 200
    assert calls == ["split_binary_body", "v2_input_tensor"]
    # A large binary tensor behind a small JSON header is used in place, inline (no thread hand-offs).
    x = np.zeros((8, 3, 16, 16), np.float32).tobytes() * 4  # 98 KB of tail, beyond the inline limit
    header = {"inputs": [{"name": "input", "shape": [32, 3, 16, 16], "datatype": "FP32",
                          "parameters": {"binary_data_size": len(x)}}]}
    head = json.dumps(header).encode()
    r = client.post(
        "/v2/models/tiny/infer", content=head + x, headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert r.status_code == 400 and "exceeds max_batch_size" in r.json()["error"]  # parsed, then refused
    assert calls == ["split_binary_body", "v2_input_tensor"]


def test_binary_length_mismatches_are_400(client):
    x = _tensor()
    for size, extra in ((x.nbytes - 4, b""), (x.nbytes, b""), (x.nbytes, None)):
        header = {
            "inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32", "parameters": {"binary_data_size": size}}]
        }
        head = json.dumps(header).encode()
        payload = head + (x.tobytes()[:-8] if extra is not None else x.tobytes())
        length = str(len(head)) if extra is not None else str(len(payload) + 5)
        r = client.post("/v2/models/tiny/infer", content=payload, headers={"Inference-Header-Content-Length": length})
        assert r.status_code == 400, r.text
    r = client.post("/v2/models/tiny/infer", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post("/v2/models/tiny/infer", content=b"{}", headers={"Inference-Header-Content-Length": "abc"})
    assert r.status_code == 400


def test_unknown_model_infer_is_404(client):
    r = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404 and "unknown model" in r.json()["error"]


# -- Triton extensions: model configuration, statistics, repository -----------------------------


def test_model_config_describes_what_the_server_accepts(make_client):
    client = make_client(max_batch_size=4, max_queue_delay_ms=2.5, default_budget_ms=50)
    config = client.get("/v2/models/tiny/config").json()
    assert config["name"] == "tiny" and config["max_batch_size"] == 4
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("input", t, [3, 16, 16]) for t in ("TYPE_FP32", "TYPE_FP16", "TYPE_UINT8")]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 2500}
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert params["widths"] == "0.25,0.5,0.75,1.0" and params["policy"] == "max-width"
    assert params["default_budget_ms"] == "50.0"
    assert client.get("/v2/models/tiny/versions/1/config").json() == config
    assert client.get("/v2/models/other/config").status_code == 404


def test_statistics_follow_served_and_failed_requests(make_client):
    client = make_client()
    before = client.get("/v2/models/tiny/stats").json()["model_stats"][0]
    assert before["inference_count"] == 0 and before["inference_stats"]["success"]["count"] == 0
    x = np.zeros((2, 3, 16, 16), np.float32)
    for width in (0.25, 1.0):
        assert _infer(client, {"inputs": [dict(GOOD_INPUT, shape=[2, 3, 16, 16], data=x.ravel().tolist())],
                               "parameters": {"width": width}}).status_code == 200
    assert _infer(client, {"inputs": [GOOD_INPUT], "parameters": {"width": 0.3}}).status_code == 422
    stats = eventually(lambda: client.get("/v2/models/tiny/stats").json()["model_stats"][0]["execution_count"], 2)
    assert stats == 2
    entry = client.get("/v2/models/tiny/stats").json()["model_stats"][0]
    inference = entry["inference_stats"]
    assert entry["inference_count"] == 4 and inference["success"]["count"] == 2 and inference["fail"]["count"] == 1
    assert inference["queue"]["count"] == 2 and inference["compute_infer"]["count"] == 2
    assert inference["success"]["ns"] >= inference["compute_infer"]["ns"] > 0
    assert entry["batch_stats"] == [
        {"batch_size": 2, "compute_infer": {"count": 2, "ns": entry["batch_stats"][0]["compute_infer"]["ns"]}}
    ]
    assert {w["width"]: w["inference_count"] for w in entry["widths"]} == {0.25: 2, 0.5: 0, 0.75: 0, 1.0: 2}
    assert entry["last_inference"] > 1.7e12  # ms since the epoch
    assert client.get("/v2/models/stats").json() == client.get("/v2/models/tiny/stats").json()


def test_repository_index_load_and_unload(make_client):
    client = make_client()
    assert client.post("/v2/repository/index").json() == [
        {"name": "tiny", "version": "1", "state": "READY", "reason": ""}
    ]
    assert client.post("/v2/repository/index", json={"ready": True}).json()[0]["state"] == "READY"
    assert client.post("/v2/repository/index", json={"ready": "yes"}).status_code == 400
    assert client.post("/v2/repository/index", content=b"{").status_code == 400
    nested = client.post("/v2/repository/index", content=b"[" * 60000)  # was a RecursionError: 500
    assert nested.status_code == 400 and "nested too deeply" in nested.json()["error"]
    assert client.post("/v2/repository/models/tiny/load").status_code == 200
    assert client.post("/v2/repository/models/other/load").status_code == 404
    r = client.post("/v2/repository/models/tiny/unload")
    assert r.status_code == 400 and "one model" in r.json()["error"]
    client.app.state.engine.begin_drain()
    assert client.post("/v2/repository/index", json={"ready": True}).json() == []
    assert client.post("/v2/repository/index").json()[0] == {"name": "tiny", "version": "1", "state": "UNAVAILABLE",
                                                             "reason": "model is draining"}


def test_v2_answer_names_width_and_reason(make_client):
    client = make_client()
    r = _infer(client, {"inputs": [GOOD_INPUT], "parameters": {"latency_budget_ms": 10_000}})
    assert r.status_code == 200
    assert r.json()["parameters"]["width"] == 1.0 and r.json()["parameters"]["reason"] == "budget"
    assert r.headers["x-served-width"] == "1.0" and r.headers["x-width-reason"] == "budget"
