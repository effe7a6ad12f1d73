"""Per-switch cost: multiply-accumulates, parameters and measured latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from .net import SlimmableNet

__all__ = ["SwitchCost", "count_macs", "count_params", "shared_param_count", "measure_latency_ms", "profile_net"]


@dataclass(frozen=True)
class SwitchCost:
    width: float
    macs: int
    params: int
    latency_ms: float | None = None


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of conv and linear layers for one sample (BN, activations and adds excluded)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            module(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shared_param_count(net: SlimmableNet) -> int:
    """All learnable parameters of the slimmable net: shared weights plus every switch's BN."""
    return count_params(net)


def measure_latency_ms(module: nn.Module, input_shape: tuple[int, ...], warmup: int = 5, repeats: int = 20) -> float:
    """Median wall time of one forward pass (milliseconds) on the module's device."""
    x = torch.randn(*input_shape)
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def profile_net(
    net: SlimmableNet, input_size: int | None = None, latency: bool = True, repeats: int = 20
) -> list[SwitchCost]:
    """MACs, active params and (optionally) batch-1 latency of every switch."""
    size = input_size or net.input_size
    shape = (net.in_channels, size, size)
    costs = []
    for width in net.widths:
        module = net.switch(width)
        latency_ms = None
        if latency:
            latency_ms = measure_latency_ms(net.switch(width, fold_bn=True), (1, *shape), repeats=repeats)
        costs.append(SwitchCost(width, count_macs(module, shape), count_params(module), latency_ms))
    return costs
