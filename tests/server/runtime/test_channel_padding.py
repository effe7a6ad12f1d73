"""Zero-padding conv channels to ORT's block: exact, and only where it can be exact."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import models
from server.runtime.channel_padding import pad_channels
from server.runtime.cpu_features import nchwc_block
from server.runtime.onnx_export import export_switch_onnx
from server.runtime.ort import ort_session_options, use_global_thread_pool


def run(model: bytes, x: np.ndarray) -> np.ndarray:
    use_global_thread_pool(1)  # sessions in this process share one pool (the first caller sets its size)
    session = ort.InferenceSession(model, ort_session_options(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def conv_out_channels(model: onnx.ModelProto) -> list[int]:
    weights = {t.name: t for t in model.graph.initializer}
    return [int(weights[n.input[1]].dims[0]) for n in model.graph.node if n.op_type == "Conv"]


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    net = models.create("s_mobilenet_v2", input_size=64)
    for m in net.modules():  # non-trivial folded biases
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.slow
def test_mobilenet_v2_switches_are_padded_exactly(mobilenet):
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    for width in mobilenet.widths:
        plain = export_switch_onnx(mobilenet, width)
        padded = onnx.load_from_string(plain)
        groups = pad_channels(padded, 16)
        onnx.checker.check_model(padded)
        assert all(c % 16 == 0 for c in conv_out_channels(padded)), width
        if width == 0.35:  # the 8-channel bottlenecks (and their residual add) are among them
            assert groups >= 2 and 8 in conv_out_channels(onnx.load_from_string(plain))
        expected, got = run(plain, x), run(padded.SerializeToString(), x)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def tiny_graph(middle: onnx.NodeProto | None, extra_inits=(), output="y") -> onnx.ModelProto:
    """input(3) -> Conv(5) -> [middle] -> Conv(4) -> y"""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((5, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((4, 5, 1, 1)).astype(np.float32), "w2"), *extra_inits]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["h"])]
    between = "h"
    if middle is not None:
        nodes.append(middle)
        between = middle.output[0]
    nodes.append(helper.make_node("Conv", [between, "w2"], ["y"]))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in output.split(",")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def bound(name, value):
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def test_zero_preserving_ops_are_padded_through():
    model = tiny_graph(helper.make_node("Clip", ["h", "lo", "hi"], ["a"]), [bound("lo", 0.0), bound("hi", 6.0)])
    x = np.random.default_rng(2).standard_normal((1, 3, 4, 4)).astype(np.float32)
    expected = run(model.SerializeToString(), x)
    assert pad_channels(model, 16) == 1
    assert conv_out_channels(model) == [16, 4]  # the output conv reads 16 channels but still writes 4
    np.testing.assert_allclose(run(model.SerializeToString(), x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["clip_above_zero", "pooling", "graph_output"])
def test_groups_that_cannot_be_padded_exactly_are_left_alone(case):
    if case == "clip_above_zero":  # Clip(min=1) turns the zero channels into ones
        model = tiny_graph(helper.make_node("Clip", ["h", "lo", "hi"], ["a"]), [bound("lo", 1.0), bound("hi", 6.0)])
    elif case == "pooling":
        model = tiny_graph(helper.make_node("MaxPool", ["h"], ["a"], kernel_shape=[1, 1]))
    else:
        model = tiny_graph(None, output="y,h")
    before = model.SerializeToString()
    assert pad_channels(model, 16) == 0
    assert model.SerializeToString() == before


def test_nchwc_block_follows_the_cpu_flags(tmp_path, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    for flags, block in (("fpu avx2 avx512f", 16), ("fpu sse4_2 avx2", 8), ("fpu sse4_2", None)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert nchwc_block(str(cpuinfo)) == block
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert nchwc_block(str(cpuinfo)) is None
