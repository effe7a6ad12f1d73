import threading

import pytest
import torch

import models
from models.profiling import count_macs, profile_net
from models.slimmable import make_divisible
from tests.helpers import OFFICIAL_ARCHS, make_net


def _some_widths(arch: str) -> tuple[float, ...]:
    """Every switch of a slimmable net; three of a universally slimmable net's dozens of slots."""
    widths = models.create(arch).widths
    return (widths[0], widths[len(widths) // 2], widths[-1]) if arch.startswith("us_") else widths


ALL_SWITCHES = [(arch, w) for arch in models.list_models() for w in _some_widths(arch)]


@pytest.mark.parametrize("arch", OFFICIAL_ARCHS)
def test_state_dict_layout_equals_official(arch, reference_layout):
    expected = {k.removeprefix("module."): shape for k, shape, _ in reference_layout[arch]["state_dict"]}
    got = {k: list(v.shape) for k, v in models.create(arch).state_dict().items()}
    assert got == expected


@pytest.mark.parametrize("arch", OFFICIAL_ARCHS)
def test_macs_and_params_equal_official_oracle(arch, reference_layout):
    ref = reference_layout[arch]
    net = models.create(arch)
    assert models.shared_param_count(net) == ref["num_params_shared"]
    costs = profile_net(net, input_size=224, latency=False)
    assert [c.width for c in costs] == ref["width_mult_list"]
    for cost in costs:
        oracle = ref["macs_per_width"][str(cost.width)]
        # 0.5% for the official code's counts; S-ShuffleNet's are the paper's, rounded to 1M
        assert abs(cost.macs - oracle) / oracle <= ref.get("macs_tolerance", 0.005), (cost.width, cost.macs, oracle)


def test_macs_match_design_table():
    # docs/design.md fact 5, rounded as in the official README.
    v2 = [c.macs / 1e6 for c in profile_net(models.create("s_mobilenet_v2"), latency=False)]
    assert [round(m) for m in v2] == [59, 97, 209, 301]


@pytest.mark.parametrize("arch,width", ALL_SWITCHES)
@pytest.mark.parametrize("fold_bn,share", [(False, False), (True, False), (False, True), (True, True)])
def test_switch_export_equals_slimmable_forward(arch, width, fold_bn, share):
    net = make_net(arch).eval()
    x = torch.randn(2, net.in_channels, net.input_size, net.input_size)
    with torch.inference_mode():
        expected = net(x, width=width)
        exported = net.switch(width, fold_bn=fold_bn, share=share)
        got = exported(x)
        got_nhwc = exported(x.contiguous(memory_format=torch.channels_last))
    for out in (got, got_nhwc):
        rel = (out - expected).abs().max() / expected.abs().max()
        assert rel <= 1e-5


@pytest.mark.parametrize("arch", models.list_models())
def test_a_shared_switch_holds_only_the_nets_tensors_and_per_channel_bn(arch):
    """``at_width``: nothing weight-shaped is copied, and every BN is folded (at each call)."""
    net = make_net(arch).eval()
    held = {id(p) for p in net.parameters()}
    for width in _some_widths(arch):
        shared = net.at_width(width)
        assert {id(p) for p in shared.parameters()} <= held
        assert all(b.dim() == 1 for b in shared.buffers())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in shared.modules())


@pytest.mark.parametrize("arch", models.list_models())
def test_exported_switch_is_plain_torch_and_folding_removes_every_bn(arch):
    net = make_net(arch)
    for width in _some_widths(arch):
        plain = net.switch(width)
        assert not any(hasattr(m, "export") for m in plain.modules())
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
        folded = net.switch(width, fold_bn=True)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_switch_uses_leading_channel_slice():
    net = make_net("s_convnet6")
    conv = net.features[0].body[0]
    exported = net.switch(0.5).eval()
    first = exported[0][0].body[0]
    assert torch.equal(first.weight, conv.weight[: first.out_channels, : first.in_channels])


@pytest.mark.parametrize("bad", [0.3, 2.0, -1.0, 0.0])
def test_forward_rejects_undeclared_width(bad):
    net = models.create("s_convnet6")
    with pytest.raises(ValueError, match="not one of the declared widths"):
        net(torch.zeros(1, 3, 16, 16), width=bad)
    with pytest.raises(ValueError):
        net.switch(bad)


def test_create_validates_arguments():
    with pytest.raises(ValueError, match="unknown architecture"):
        models.create("resnet9000")
    with pytest.raises(ValueError, match="ascending"):
        models.create("s_convnet6", widths=(1.0, 0.5))
    with pytest.raises(ValueError, match="bn_mode"):
        models.create("s_convnet6", bn_mode="group")
    assert models.create("s_mobilenet_v2").widths == (0.35, 0.5, 0.75, 1.0)
    assert models.create("s_resnet50", widths=(0.5, 1.0)).widths == (0.5, 1.0)


def test_make_divisible_follows_official_rounding():
    assert [make_divisible(32 * w) for w in (0.35, 0.5, 0.75, 1.0)] == [16, 16, 24, 32]
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(320 * 0.35) == 112


def test_resnet_channels_use_int_rule():
    net = models.create("s_resnet50", widths=(0.3, 1.0))
    # int(64 * 0.3) = 19, not rounded to a multiple of 8
    assert net.features[0][0].out_channels_list == (19, 64)


def test_count_macs_of_single_conv():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (3, 10, 10)) == 8 * 10 * 10 * 3 * 9


@pytest.mark.slow
def test_concurrent_widths_are_bit_identical_to_sequential():
    net = make_net("s_mobilenet_v2_cifar")
    torch.manual_seed(1)
    inputs = {w: torch.randn(2, 3, 32, 32) for w in net.widths}
    with torch.inference_mode():
        expected = {w: net(inputs[w], width=w) for w in net.widths}
    mismatches: list[str] = []
    errors: list[BaseException] = []

    def worker(width: float) -> None:
        try:
            with torch.inference_mode():
                for i in range(50):
                    out = net(inputs[width], width=width)
                    if not torch.equal(out, expected[width]):
                        mismatches.append(f"width {width} run {i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in net.widths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not mismatches


def test_moving_shared_switches_converts_the_nets_one_tensor_once():
    """What the CUDA executor does to each width's module (``.to(device, dtype, channels_last)``), here with
    float64: every width still reads one tensor, converted in place, and computes the converted net."""
    net = make_net("s_mobilenet_v2_cifar").eval()
    switches = {w: net.at_width(w) for w in net.widths}  # all built first, as the runtime does
    moved = {w: m.to(dtype=torch.float64, memory_format=torch.channels_last) for w, m in switches.items()}
    first_conv_weights = {id(next(m.parameters())) for m in moved.values()}
    assert first_conv_weights == {id(next(net.parameters()))}
    assert next(net.parameters()).dtype == torch.float64
    x = torch.randn(2, 3, net.input_size, net.input_size, dtype=torch.float64)
    with torch.inference_mode():
        for w, m in moved.items():
            expected, got = net.double()(x, width=w), m(x)
            assert got.dtype == torch.float64
            # to float32's precision: a width's BN scale and shift were computed before the move
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
