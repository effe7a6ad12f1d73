"""The gRPC port under clients that do not play by the rules: what an unauthenticated or greedy client
can cost, and that the port serves again as soon as it leaves (server/api/grpc_port.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx2
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from server.testing import free_port
from tests.helpers import REPO

pytestmark = pytest.mark.slow
TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def infer_request(model: str = "tiny", samples: int = 1, side: int = 16) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[samples, 3, side, side])
    request.raw_input_contents.append(np.zeros((samples, 3, side, side), np.float32).tobytes())
    return request


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_an_unauthenticated_call_is_refused_before_its_message_is_read(grpc_server):
    server, address = grpc_server("--api-token", TOKEN)
    # 8 MB: far over what the model can take (the cap is its largest batch plus framing). Refused for
    # its token, not its size: the message was never read.
    huge = pb.ModelInferRequest(model_name="tiny")
    huge.inputs.add(name="input", datatype="FP32", shape=[1, 3, 16, 16])
    huge.raw_input_contents.append(bytes(8 * 1024 * 1024))
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def refusals(message: pb.ModelInferRequest) -> set:
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                calls = [pool.submit(stub.ModelInfer, message, timeout=30) for _ in range(32)]
                codes = set()
                for call in calls:
                    with pytest.raises(grpc.RpcError) as err:
                        call.result()
                    codes.add(err.value.code())
            return codes

        assert refusals(infer_request()) == {grpc.StatusCode.UNAUTHENTICATED}  # grpc's own pools start here
        before = resident_mb(server.proc.pid)
        assert refusals(huge) == {grpc.StatusCode.UNAUTHENTICATED}
        grown = resident_mb(server.proc.pid) - before
        print(f"RSS grew {grown:.1f} MB")
        assert grown < 64  # 32 x 8 MB sent; each costs its window at most
        # with the token, the same message is refused for its size, and a real one is served
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(huge, timeout=30, metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ModelInfer(infer_request(), timeout=30, metadata=AUTH).outputs[0].shape == [1, 10]


@pytest.mark.parametrize("headers", [
    (("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")),
    (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
])
def test_a_repeated_authorization_is_refused_on_both_transports(grpc_server, headers):
    server, address = grpc_server("--api-token", TOKEN)
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(), timeout=30, metadata=headers)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    r = httpx2.get(server.url + "/v1/models", headers=[(k.encode(), v.encode()) for k, v in headers])
    assert r.status_code == 401


def test_a_method_the_server_does_not_implement_is_unimplemented_without_a_traceback(grpc_server):
    server, address = grpc_server()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        unimplemented = [(stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest()),
                         (stub.CudaSharedMemoryRegister, pb.CudaSharedMemoryRegisterRequest()),
                         (stub.TraceSetting, pb.TraceSettingRequest())]
        for call, request in unimplemented:
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "not implemented" in err.value.details() and "Error" not in err.value.details()
        assert stub.ModelInfer(infer_request(), timeout=30).outputs[0].shape == [1, 10]
    assert "Traceback" not in server.output() and "NotImplementedError" not in server.output()


def test_calls_over_the_limit_get_unavailable_with_retry_info_and_freed_slots_serve_again(grpc_server,
                                                                                          slow_checkpoint):
    server, address = grpc_server("--checkpoint", str(slow_checkpoint), "--max-batch-size", "1", "--threads", "1",
                                  "--max-inflight-http", "2")
    name = httpx2.get(server.url + "/v1/models").json()["models"][0]["name"]
    request = infer_request(name, side=224)
    codes: list = []
    lock = threading.Lock()

    def call(stub) -> None:
        try:
            stub.ModelInfer(request, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                retry = error_details_pb2.RetryInfo()
                status = rpc_status.from_call(exc)
                assert status is not None and status.details[0].Unpack(retry) and retry.retry_delay.seconds == 1
        with lock:
            codes.append(code)

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        threads = [threading.Thread(target=call, args=(stub,)) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert grpc.StatusCode.CANCELLED not in codes and set(codes) <= {grpc.StatusCode.OK,
                                                                         grpc.StatusCode.UNAVAILABLE}
        assert codes.count(grpc.StatusCode.OK) >= 2 and grpc.StatusCode.UNAVAILABLE in codes
        # Callers that give up (the client cancelling, or its deadline) free their slots at once.
        futures = [stub.ModelInfer.future(request, timeout=60) for _ in range(8)]
        time.sleep(0.05)
        for future in futures:
            future.cancel()
        expiring = [stub.ModelInfer.future(request, timeout=0.05) for _ in range(4)]
        for future in expiring:
            with pytest.raises(grpc.RpcError):
                future.result()
        started = time.monotonic()
        while time.monotonic() - started < 5 and httpx2.get(server.url + "/readyz").status_code != 200:
            time.sleep(0.02)
        assert time.monotonic() - started < 1.5
        assert stub.ModelInfer(request, timeout=60).outputs[0].shape == [1, 10]


def test_readiness_is_503_with_retry_after_while_every_grpc_slot_is_taken() -> None:
    # Checked on the handler itself: live, the window where both slots are held is one inference long
    # and a poll of /readyz lands in it only by luck.
    from server.api.grpc_port import GrpcPort
    from server.api.ops import readyz
    from server.http.limits import InflightGate

    gate = InflightGate(limit=2)
    engine = SimpleNamespace(ready=True, failure=None, state=SimpleNamespace(value="ready"))
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(engine=engine,
                                                                        grpc_port=GrpcPort(None, gate))))
    statuses = []
    for _ in range(2):
        assert gate.try_enter()
        statuses.append(asyncio.run(readyz(request)))
    assert not gate.try_enter()
    gate.leave()
    statuses.append(asyncio.run(readyz(request)))
    assert [r.status_code for r in statuses] == [200, 503, 200]
    assert statuses[1].headers["retry-after"] == "1"
    assert json.loads(statuses[1].body)["error"] == "the gRPC port is at its limit of 2 calls in flight"


def test_a_call_carrying_raw_and_typed_contents_is_refused(grpc_server):
    server, address = grpc_server()
    both = infer_request()
    both.inputs[0].contents.fp32_contents.extend([0.0] * 768)
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(both, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "both" in err.value.details()


def test_width_and_budget_metadata_mean_what_the_http_headers_mean(grpc_server):
    server, address = grpc_server()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(infer_request(), timeout=30, metadata=(("x-width", "0.5"),))
        assert response.parameters["width"].double_param == 0.5
        assert response.parameters["reason"].string_param == "pinned"
        response = stub.ModelInfer(infer_request(), timeout=30, metadata=(("x-latency-budget-ms", "250"),))
        assert response.parameters["budget_ms"].double_param == 250  # not the call's 30 s deadline
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request(), timeout=30, metadata=(("x-width", "0.3"),))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_idle_connections_are_closed_and_one_connection_cap_covers_both_ports(grpc_server):
    server, address = grpc_server("--header-timeout-s", "1", "--max-connections", "16")
    pid = server.proc.pid
    baseline = open_fds(pid)
    host, port = address.rsplit(":", 1)
    idle = []
    for _ in range(64):  # connections that never send a byte, to each port
        for p in (int(port), server.port):
            s = socket.create_connection((host, p), timeout=5)
            idle.append(s)
    time.sleep(0.5)
    assert open_fds(pid) - baseline <= 16 + 8  # the one cap (12 HTTP, 4 gRPC), not the 128 connections
    assert httpx2.get(server.url + "/healthz", timeout=5).status_code == 200  # still answering at the cap
    with grpc.insecure_channel(address) as channel:  # a legitimate gRPC client is served once idle ones go
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + 10
        while True:
            try:
                stub.ServerLive(pb.ServerLiveRequest(), timeout=2)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    for s in idle:
        s.close()
    time.sleep(2.5)  # the idle timeout (1 s) has passed for everything left
    assert open_fds(pid) - baseline <= 4


def test_a_busy_grpc_or_http_port_is_one_line_and_exit_2_before_any_start_up_work():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for flags in (["--port", str(busy)], ["--port", str(free_port()), "--grpc-port", str(busy)]):
            out = subprocess.run([sys.executable, "-m", "server.cli", "serve", *flags], cwd=REPO,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 2, out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and "cannot listen" in lines[0] and str(busy) in lines[0], lines
            assert "exporting" not in out.stdout + out.stderr
