"""KServe v2 over gRPC, driven by ``tritonclient.grpc`` (and the raw stub) against ``widthwise serve --grpc-port``."""

from __future__ import annotations

import threading
import time

import grpc
import httpx2
import numpy as np
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

import models

pytestmark = pytest.mark.slow
triton = pytest.importorskip("tritonclient.grpc")


def _input(x: np.ndarray, datatype: str = "FP32"):
    inp = triton.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def _metric(url: str, prefix: str) -> float:
    return _metric_in(httpx2.get(url + "/metrics").text, prefix)


def _metric_in(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_grpc_infer_equals_reference_and_names_width_and_reason(grpc_server, tiny_checkpoint):
    server, address = grpc_server()
    client = triton.InferenceServerClient(address)
    net = models.load_checkpoint(tiny_checkpoint).net
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
        assert client.get_server_metadata(as_json=True)["name"] == "widthwise"
        meta = client.get_model_metadata("tiny", as_json=True)
        assert [i["datatype"] for i in meta["inputs"]] == ["FP32", "FP16", "UINT8"]
        for width in (0.25, 0.5, 0.75, 1.0):
            result = client.infer("tiny", [_input(x)], parameters={"width": width})
            params = result.get_response(as_json=True)["parameters"]
            assert params["width"]["double_param"] == width and params["reason"]["string_param"] == "pinned"
            with torch.inference_mode():
                expected = net(torch.from_numpy(x), width=width).numpy()
            np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-5)
        # No width, a budget in Triton's microseconds: the policy decides, and says why.
        result = client.infer("tiny", [_input(x)], timeout=5_000_000)
        params = result.get_response(as_json=True)["parameters"]
        assert params["reason"]["string_param"] == "budget" and params["budget_ms"]["double_param"] == 5000
        # UINT8 pixels are normalised with the checkpoint's mean/std, as images are.
        pixels = np.random.default_rng(1).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
        result = client.infer("tiny", [_input(pixels, "UINT8")], parameters={"width": 0.5})
        with torch.inference_mode():
            expected = net((torch.from_numpy(pixels).float() / 255 - 0.5) / 0.5, width=0.5).numpy()
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)
    finally:
        client.close()


def test_grpc_typed_contents_and_the_call_deadline(grpc_server, tiny_checkpoint):
    server, address = grpc_server()
    net = models.load_checkpoint(tiny_checkpoint).net
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="tiny", id="req-7")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 16, 16]).contents.fp32_contents.extend(x.ravel())
        request.parameters["width"].double_param = 0.75
        response = stub.ModelInfer(request, timeout=10)
        assert response.id == "req-7" and response.parameters["width"].double_param == 0.75
        logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))
        with torch.inference_mode():
            np.testing.assert_allclose(logits, net(torch.from_numpy(x), width=0.75).numpy(), rtol=1e-4, atol=1e-5)
        # The gRPC deadline is the budget when the request names none.
        del request.parameters["width"]
        response = stub.ModelInfer(request, timeout=10)
        assert 9000 < response.parameters["budget_ms"].double_param <= 10_100
        assert response.parameters["reason"].string_param == "budget"


def _resize_batch(request: pb.ModelInferRequest, n: int) -> None:
    request.inputs[0].shape[0] = n
    request.raw_input_contents[0] = np.zeros((n, 3, 16, 16), np.float32).tobytes()


@pytest.mark.parametrize("mutate,code,words", [
    (lambda r: r.inputs[0].shape.__setitem__(1, 4), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    (lambda r: setattr(r, "model_name", "other"), grpc.StatusCode.NOT_FOUND, "unknown model"),
    (lambda r: r.parameters["width"].__setattr__("double_param", 0.3), grpc.StatusCode.INVALID_ARGUMENT, "width"),
    (lambda r: r.parameters["width"].__setattr__("string_param", "wide"), grpc.StatusCode.INVALID_ARGUMENT, "width"),
    (lambda r: r.parameters["latency_budget_ms"].__setattr__("double_param", 0.001), grpc.StatusCode.DEADLINE_EXCEEDED,
     "budget"),
    (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12), grpc.StatusCode.INVALID_ARGUMENT, "binary_data_size"),
    (lambda r: r.inputs[0].__setattr__("datatype", "INT64"), grpc.StatusCode.INVALID_ARGUMENT, "datatype"),
    (lambda r: r.outputs.add(name="probabilities"), grpc.StatusCode.INVALID_ARGUMENT, "unknown output"),
    (lambda r: _resize_batch(r, 9), grpc.StatusCode.INVALID_ARGUMENT, "max_batch_size"),
])
def test_grpc_bad_requests_get_the_right_status_and_the_server_keeps_serving(grpc_server, mutate, code, words):
    server, address = grpc_server()
    x = np.zeros((1, 3, 16, 16), np.float32)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def request():
            r = pb.ModelInferRequest(model_name="tiny")
            r.inputs.add(name="input", datatype="FP32", shape=[1, 3, 16, 16])
            r.raw_input_contents.append(x.tobytes())
            return r

        bad = request()
        mutate(bad)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad, timeout=10)
        assert err.value.code() == code and words in err.value.details()
        assert stub.ModelInfer(request(), timeout=10).outputs[0].shape == [1, 10]  # still serving


def test_grpc_authorization_metadata(grpc_server):
    server, address = grpc_server("--api-token", "s3cret")
    x = np.zeros((1, 3, 16, 16), np.float32)
    client = triton.InferenceServerClient(address)
    try:
        assert client.is_server_live()  # health stays open, as on HTTP
        with pytest.raises(triton.InferenceServerException) as err:
            client.infer("tiny", [_input(x)])
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(triton.InferenceServerException):
            client.get_model_config("tiny", headers={"authorization": "Bearer wrong"})
        result = client.infer("tiny", [_input(x)], headers={"authorization": "Bearer s3cret"})
        assert result.as_numpy("logits").shape == (1, 10)
    finally:
        client.close()


def test_grpc_config_statistics_and_index_agree_with_http_and_metrics(grpc_server):
    server, address = grpc_server("--max-batch-size", "4")
    client = triton.InferenceServerClient(address)
    x = np.zeros((2, 3, 16, 16), np.float32)
    try:
        for width in (0.25, 0.5, 0.5):
            client.infer("tiny", [_input(x)], parameters={"width": width})
        with pytest.raises(triton.InferenceServerException):
            client.infer("tiny", [_input(x)], parameters={"width": 0.3})  # counted as a failure
        config = client.get_model_config("tiny", as_json=True)["config"]
        assert config["max_batch_size"] == 4
        assert [(i["name"], i["data_type"]) for i in config["input"]] == [
            ("input", "TYPE_FP32"), ("input", "TYPE_FP16"), ("input", "TYPE_UINT8")]
        assert config["parameters"]["widths"]["string_value"] == "0.25,0.5,0.75,1.0"
        assert config["parameters"]["policy"]["string_value"] == "max-width"
        assert httpx2.get(server.url + "/v2/models/tiny/config").json()["max_batch_size"] == 4

        stats = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
        http = httpx2.get(server.url + "/v2/models/tiny/stats").json()["model_stats"][0]
        url = server.url
        served = _metric(url, 'widthwise_requests_total{model="tiny",outcome="ok"') + \
            _metric(url, 'widthwise_requests_total{model="tiny",outcome="deadline_missed"')
        failed = _metric(url, 'widthwise_requests_total{model="tiny",outcome="bad_request"')
        assert (
            int(stats["inference_stats"]["success"]["count"])
            == served
            == 3
            == http["inference_stats"]["success"]["count"]
        )
        assert int(stats["inference_stats"]["fail"]["count"]) == failed == 1
        assert int(stats["execution_count"]) == _metric(url, "widthwise_batch_size_count") == 3
        assert int(stats["inference_count"]) == _metric(url, "widthwise_batch_size_sum") == 6
        assert int(stats["inference_stats"]["queue"]["count"]) == _metric(url, "widthwise_queue_wait_seconds_count")
        queue_s = _metric(url, "widthwise_queue_wait_seconds_sum")
        assert abs(int(stats["inference_stats"]["queue"]["ns"]) / 1e9 - queue_s) < 1e-6
        assert {b["batch_size"]: b["compute_infer"]["count"] for b in http["batch_stats"]} == {2: 3}
        per_width = {w["width"]: (w["success_count"], w["reasons"]) for w in http["widths"]}
        assert per_width[0.5] == (2, {"pinned": 2}) and per_width[0.25] == (1, {"pinned": 1})
        assert per_width[1.0] == (0, {})

        index = client.get_model_repository_index(as_json=True)["models"]
        assert index == [{"name": "tiny", "version": "1", "state": "READY"}]
        assert httpx2.post(server.url + "/v2/repository/index", json={"ready": True}).json()[0]["state"] == "READY"
    finally:
        client.close()


def test_sigterm_drains_grpc_calls_and_refuses_new_ones_with_retry_info(grpc_server, slow_checkpoint):
    server, address = grpc_server("--checkpoint", str(slow_checkpoint), "--max-batch-size", "1", "--threads", "1")
    name = httpx2.get(server.url + "/v1/models").json()["models"][0]["name"]
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
    request.raw_input_contents.append(np.zeros((1, 3, 224, 224), np.float32).tobytes())
    codes: list = []
    lock = threading.Lock()
    n = 24  # ~2 s of work on one thread: a busy test machine must still find a queue at SIGTERM
    start = threading.Barrier(n)  # connect first, then send together: a queue must exist at SIGTERM

    def send() -> None:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            start.wait(timeout=30)
            try:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            with lock:
                codes.append(code)

    threads = [threading.Thread(target=send) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx2.get(server.url + "/metrics").text  # one scrape: both values from the same moment
        answered = _metric_in(text, "widthwise_requests_total")
        inflight = _metric_in(text, "widthwise_inflight_requests")
        if answered + inflight == n:
            break
        time.sleep(0.01)
    assert answered + inflight == n and inflight >= 2, (answered, inflight)  # a queue exists at SIGTERM
    server.proc.terminate()
    time.sleep(0.1)
    # A new call during the drain: UNAVAILABLE, with google.rpc.RetryInfo and retry-after.
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(err.value)
    retry = error_details_pb2.RetryInfo()
    assert status is not None and status.details[0].Unpack(retry) and retry.retry_delay.seconds == 1
    assert ("retry-after", "1") in tuple(err.value.trailing_metadata())
    for t in threads:
        t.join(timeout=120)
    assert server.proc.wait(timeout=60) == 0
    assert codes.count(grpc.StatusCode.OK) == n, codes  # everything admitted before SIGTERM was answered



def test_grpc_access_log_takes_the_request_id_as_http_does(grpc_server):
    server, address = grpc_server()
    x = np.zeros((1, 3, 16, 16), np.float32)
    client = triton.InferenceServerClient(address)
    try:
        client.infer("tiny", [_input(x)], headers={"x-request-id": "trace-42.a"})
        client.infer("tiny", [_input(x)], headers={"x-request-id": "has space"})  # not a plain token: replaced
    finally:
        client.close()
    time.sleep(0.2)
    lines = [line for line in server.output().splitlines() if "ModelInfer" in line]
    assert len(lines) == 2 and "request_id=trace-42.a" in lines[0]
    assert "has space" not in lines[1] and "request_id=" in lines[1]
