import numpy as np
import pytest
import torch

from server.runtime import Runtime, resolve_backend
from server.runtime.onnx_export import export_onnx
from tests.helpers import make_net


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["s_convnet6", "s_mobilenet_v2_cifar", "s_shufflenet"])  # shufflenet: widths to 2.0
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_runtime_outputs_equal_slimmable_forward(arch, backend):
    net = make_net(arch)
    runtime = Runtime(net, "cpu", backend)
    assert runtime.backend == backend
    for batch in (1, 3):
        x = torch.randn(batch, 3, net.input_size, net.input_size)
        for width in net.widths:
            with torch.inference_mode():
                expected = net(x, width=width)
            got = runtime.run(width, x.numpy())  # batches cross the runtime as numpy arrays
            assert got.shape == tuple(expected.shape) and got.dtype == np.float32
            rel = np.abs(got - expected.numpy()).max() / expected.abs().max()
            assert rel <= 1e-4, (width, batch, float(rel))


@pytest.mark.parametrize("arch", ["s_mobilenet_v2_cifar", "s_shufflenet", "us_convnet6"])
def test_shared_weights_serve_every_width_from_the_nets_one_copy(arch):
    """--weights shared: the paper's one set of weights, each width its own BN; no weight is copied (BN is
    folded at each call, so a width keeps only its per-channel scale and shift)."""
    net = make_net(arch).eval()
    runtime = Runtime(net, "cpu", weights="shared")
    assert runtime.backend == "torch"  # auto: ONNX Runtime cannot share one weight tensor between widths
    assert runtime.fingerprint["weights"] == "shared"
    x = torch.randn(3, 3, net.input_size, net.input_size)
    held = {t.data_ptr() for t in net.parameters()}
    per_width_values = 0
    for width in net.widths:
        with torch.inference_mode():
            expected = net(x, width=width)
        np.testing.assert_allclose(runtime.run(width, x.numpy()), expected.numpy(), rtol=1e-5, atol=1e-5)
        module = runtime._executors[width].module
        assert {t.data_ptr() for t in module.parameters()} <= held  # the net's own tensors, no copy
        assert all(b.dim() == 1 for b in module.buffers())  # per-channel scale and shift only
        per_width_values += sum(b.numel() for b in module.buffers())
    assert per_width_values < sum(p.numel() for p in net.parameters()) / 10  # all widths together


def test_shared_weights_refuse_onnxruntime_and_per_width_keeps_its_fingerprint():
    net = make_net("s_convnet6")
    with pytest.raises(ValueError, match="torch backend"):
        Runtime(net, "cpu", "onnxruntime", weights="shared")
    with pytest.raises(ValueError, match="per-width or shared"):
        Runtime(net, "cpu", "torch", weights="sliced")
    assert "weights" not in Runtime(net, "cpu", "torch").fingerprint  # profiles saved before stay valid


def test_an_uncalibrated_width_is_refused_when_shared_weights_are_built():
    net = make_net("us_convnet6", widths=(0.5, 0.75, 1.0), calibrated=(0.5, 1.0)).eval()
    with pytest.raises(ValueError, match="calibrat"):
        Runtime(net, "cpu", weights="shared")


def test_auto_backend_is_onnxruntime_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "onnxruntime"
    with pytest.raises(ValueError, match="CPU"):
        resolve_backend("onnxruntime", torch.device("cuda"))


def test_half_precision_needs_cuda():
    with pytest.raises(ValueError, match="needs CUDA"):
        Runtime(make_net("s_convnet6"), "cpu", "torch", precision="fp16")


def test_onnx_export_has_a_dynamic_batch():
    import onnx

    model = onnx.load_from_string(export_onnx(make_net("s_convnet6").switch(0.5, fold_bn=True), (3, 16, 16)))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 16, 16]
    assert not any(node.op_type == "BatchNormalization" for node in model.graph.node)


@pytest.mark.slow
def test_server_reports_its_backend(make_client):
    client = make_client()
    assert client.get("/v1/models").json()["models"][0]["backend"] == "onnxruntime"
    torch_client = make_client(backend="torch")
    assert torch_client.get("/v1/models").json()["models"][0]["backend"] == "torch"


@pytest.mark.slow
def test_a_server_with_shared_weights_answers_as_one_with_a_copy_per_width(make_client):
    from tests.helpers import png_bytes

    body = png_bytes((16, 16), seed=3)
    answers = {}
    for weights in ("per-width", "shared"):
        client = make_client(weights=weights)
        model = client.get("/v1/models").json()["models"][0]
        assert model["backend"] == ("torch" if weights == "shared" else "onnxruntime")
        assert model["weights"] == weights
        for width in (0.5, 1.0):
            reply = client.post(
                "/v1/classify", content=body, headers={"Content-Type": "image/png", "X-Width": str(width)}
            )
            assert reply.status_code == 200 and reply.json()["width"] == width
            answers[weights, width] = [p["score"] for p in reply.json()["predictions"]]
    for width in (0.5, 1.0):
        np.testing.assert_allclose(answers["shared", width], answers["per-width", width], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_serves_without_onnx_and_onnxruntime_installed(tiny_checkpoint):
    """The GPU image ships neither: importing and serving must not need them (auto -> torch)."""
    import subprocess
    import sys

    from tests.helpers import REPO

    code = f"""
import sys
sys.modules["onnx"] = None  # an import of either now fails as if not installed
sys.modules["onnxruntime"] = None
from fastapi.testclient import TestClient
from server.app import build_app
from server.settings import Settings
app = build_app(Settings(checkpoint={str(tiny_checkpoint)!r}, device="cpu", profile_repeats=3))
with TestClient(app) as client:
    app.state.engine.wait_ready(60)
    assert app.state.engine.runtime.backend == "torch", app.state.engine.runtime.backend
    body = {{"inputs": [{{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}}]}}
    r = client.post("/v2/models/tiny/infer", json=body)
    assert r.status_code == 200, r.text
print("served")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "served" in result.stdout, result.stderr[-2000:]


ARENA_PROBE = """
import json, sys, torch
from bench.memory import resident_mb
import models
from server.runtime import Runtime
widths = tuple(round(0.4 + 0.05 * i, 2) for i in range(13))
net = models.create("us_convnet6", widths=widths, calibrated=widths, input_size=96).eval()
runtime = Runtime(net, device="cpu", backend="onnxruntime", threads=1)
batch = torch.zeros(16, 3, 96, 96)
before = resident_mb()
runtime.run(1.0, batch)
widest = resident_mb()
for width in widths[:-1]:
    runtime.run(width, batch)
print(json.dumps({"widest_mb": widest - before, "others_mb": resident_mb() - widest}))
"""


@pytest.mark.slow
def test_widths_share_one_activation_arena():
    # With an arena per ONNX Runtime session every width kept its largest batch's activations for good
    # (a 14-width grid of US-MobileNet v2 224 held 1.3 GB after warm-up). One worker runs one batch at a
    # time, so narrower widths after the widest must fit in the arena the widest already grew.
    import json
    import subprocess
    import sys

    from tests.helpers import REPO

    done = subprocess.run([sys.executable, "-c", ARENA_PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown = json.loads(done.stdout.strip().splitlines()[-1])
    assert grown["widest_mb"] > 8, grown  # a batch of 16 at 96x96 needs tens of MB of activations
    assert grown["others_mb"] < 0.25 * grown["widest_mb"], grown


def test_the_torch_cpu_executor_runs_channels_last_from_32_px_inputs():
    from server.runtime.torch_cpu import TorchCpuExecutor

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return x.flatten(1)

    for side, nhwc in ((32, True), (16, False)):
        batch = np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(np.float32)
        out = TorchCpuExecutor(Recorder(), side)(batch)
        np.testing.assert_array_equal(out, batch.reshape(2, -1))  # the layout changes, the values do not
        assert seen[-1] is nhwc
