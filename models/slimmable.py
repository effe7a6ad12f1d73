"""Slimmable operators (Yu et al., "Slimmable Neural Networks", ICLR 2019, arXiv 1812.08928).

Every operator owns the weights of its widest switch; switch ``i`` uses the
leading slice ``W[:out_i, :in_i]`` (paper fact 1). The active switch is an
argument of ``forward`` -- ``forward(x, idx)`` -- so one module instance serves
concurrent requests at different widths without any shared mutable state.

``export(idx)`` turns an operator into the plain ``torch.nn`` module that
computes the same thing at switch ``idx``; the runtime executes those.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "make_divisible",
    "with_params",
    "SlimmableConv2d",
    "SlimmableLinear",
    "SwitchableBatchNorm2d",
    "SharedBatchNorm2d",
    "SlimSequential",
    "SharedSliceConv2d",
    "SharedSliceLinear",
    "FoldOnCallConv2d",
]


def make_divisible(value: float, divisor: int = 8, min_value: int = 1) -> int:
    """Round a channel count to a multiple of ``divisor`` as the official MobileNet code does."""
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:  # never round down by more than 10%
        new_value += divisor
    return new_value


def with_params(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """``module`` (a fresh Conv2d or Linear of the slice's shape) holding copies of ``weight`` and ``bias``:
    how every slimmable layer exports one switch."""
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
    return module


class SharedSliceConv2d(nn.Module):
    """One switch of a slimmable conv that copies nothing (``export(..., share=True)``): it holds the
    widest weight *Parameter itself* -- so ``.to()`` converts the one tensor in place, once for every
    width -- and reads its leading ``[:out, :in]`` slice at each call."""

    def __init__(self, source: nn.Conv2d, out_c: int, in_c: int, groups: int) -> None:
        super().__init__()
        self.weight = source.weight
        self.bias = source.bias
        self.out_c, self.in_c, self.groups = out_c, in_c, groups
        self.stride, self.padding, self.dilation = source.stride, source.padding, source.dilation

    def weight_slice(self) -> torch.Tensor:
        return self.weight[: self.out_c, : self.in_c]

    def convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x`` through this switch's geometry with ``weight`` and ``bias``."""
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias[: self.out_c] if self.bias is not None else None
        return self.convolve(x, self.weight_slice(), bias)

    def folded(self, bn: nn.BatchNorm2d) -> "FoldOnCallConv2d":
        return FoldOnCallConv2d(self, bn)


class FoldOnCallConv2d(nn.Module):
    """A :class:`SharedSliceConv2d` followed by its width's eval-mode BN, folded at each call.

    Only the per-channel scale and shift are kept (a few KB per width); the folded weight
    ``W[:out, :in] * scale`` is made per call and dropped after it. That one multiply (0.2-0.7 ms
    for all of S-MobileNet v2's convs on one core) replaces a BN pass over the activations (a fifth
    of the unfolded path's time) and is the contiguous copy of the strided slice the conv would make
    anyway."""

    def __init__(self, conv: SharedSliceConv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = conv
        with torch.no_grad():
            inv_std = torch.rsqrt(bn.running_var + bn.eps)
            scale = bn.weight.detach() * inv_std if bn.affine else inv_std
            shift = (bn.bias.detach() if bn.affine else torch.zeros_like(scale)) - bn.running_mean * scale
            if conv.bias is not None:
                shift = shift + conv.bias.detach()[: conv.out_c] * scale
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv.convolve(x, self.conv.weight_slice() * self.scale.view(-1, 1, 1, 1), self.shift)


class SharedSliceLinear(nn.Module):
    """One switch of a slimmable linear layer that copies nothing (see :class:`SharedSliceConv2d`)."""

    def __init__(self, source: nn.Linear, out_f: int, in_f: int) -> None:
        super().__init__()
        self.weight = source.weight
        self.bias = source.bias
        self.out_f, self.in_f = out_f, in_f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias[: self.out_f] if self.bias is not None else None
        return F.linear(x, self.weight[: self.out_f, : self.in_f], bias)


class SlimmableConv2d(nn.Conv2d):
    """A conv whose switch ``i`` uses ``in_channels[i]`` -> ``out_channels[i]`` channels.

    Args:
        in_channels_list: input channels per switch (ascending width order).
        out_channels_list: output channels per switch.
        depthwise: if true, switch ``i`` is a depthwise conv with ``groups = in_i``.
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels_list: Sequence[int],
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        depthwise: bool = False,
        bias: bool = False,
    ) -> None:
        in_max, out_max = max(in_channels_list), max(out_channels_list)
        super().__init__(
            in_max, out_max, kernel_size, stride, padding, groups=in_max if depthwise else 1, bias=bias
        )
        if depthwise and list(in_channels_list) != list(out_channels_list):
            raise ValueError("a depthwise slimmable conv needs in == out channels per switch")
        self.in_channels_list = tuple(in_channels_list)
        self.out_channels_list = tuple(out_channels_list)
        self.depthwise = depthwise

    def switch_params(self, idx: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Weight slice, bias slice and groups of switch ``idx``."""
        out_c = self.out_channels_list[idx]
        in_c = 1 if self.depthwise else self.in_channels_list[idx]
        groups = self.in_channels_list[idx] if self.depthwise else 1
        weight = self.weight[:out_c, :in_c]
        bias = self.bias[:out_c] if self.bias is not None else None
        return weight, bias, groups

    def forward(self, x: torch.Tensor, idx: int) -> torch.Tensor:  # type: ignore[override]
        weight, bias, groups = self.switch_params(idx)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def export(self, idx: int, share: bool = False) -> nn.Module:
        weight, bias, groups = self.switch_params(idx)
        if share:
            return SharedSliceConv2d(self, weight.shape[0], weight.shape[1], groups)
        conv = nn.Conv2d(
            self.in_channels_list[idx],
            self.out_channels_list[idx],
            self.kernel_size,
            self.stride,
            self.padding,
            groups=groups,
            bias=bias is not None,
        )
        return with_params(conv, weight, bias)


class SlimmableLinear(nn.Linear):
    """A linear layer whose switch ``i`` reads the first ``in_features_list[i]`` features."""

    def __init__(self, in_features_list: Sequence[int], out_features_list: Sequence[int], bias: bool = True) -> None:
        super().__init__(max(in_features_list), max(out_features_list), bias=bias)
        self.in_features_list = tuple(in_features_list)
        self.out_features_list = tuple(out_features_list)

    def switch_params(self, idx: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        out_f, in_f = self.out_features_list[idx], self.in_features_list[idx]
        bias = self.bias[:out_f] if self.bias is not None else None
        return self.weight[:out_f, :in_f], bias

    def forward(self, x: torch.Tensor, idx: int) -> torch.Tensor:  # type: ignore[override]
        weight, bias = self.switch_params(idx)
        return F.linear(x, weight, bias)

    def export(self, idx: int, share: bool = False) -> nn.Module:
        weight, bias = self.switch_params(idx)
        if share:
            return SharedSliceLinear(self, weight.shape[0], weight.shape[1])
        return with_params(nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None), weight, bias)


def _copy_bn(src: nn.BatchNorm2d, channels: int) -> nn.BatchNorm2d:
    """A fresh BatchNorm2d holding the first ``channels`` entries of ``src``."""
    bn = nn.BatchNorm2d(channels, eps=src.eps, momentum=src.momentum, affine=src.affine)
    with torch.no_grad():
        if src.affine:
            bn.weight.copy_(src.weight[:channels])
            bn.bias.copy_(src.bias[:channels])
        bn.running_mean.copy_(src.running_mean[:channels])
        bn.running_var.copy_(src.running_var[:channels])
        bn.num_batches_tracked.copy_(src.num_batches_tracked)
    return bn.eval()


class SwitchableBatchNorm2d(nn.Module):
    """Switchable BN (S-BN, paper fact 2): one private BatchNorm2d per switch.

    The state-dict keys (``bn.<i>.weight`` ...) match the official checkpoints.
    """

    def __init__(self, channels_list: Sequence[int]) -> None:
        super().__init__()
        self.channels_list = tuple(channels_list)
        self.bn = nn.ModuleList(nn.BatchNorm2d(c) for c in channels_list)

    def forward(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        return self.bn[idx](x)

    def export(self, idx: int, share: bool = False) -> nn.BatchNorm2d:
        # copied even when sharing: a width's own statistics, a few KB, which folding consumes
        return _copy_bn(self.bn[idx], self.channels_list[idx])


class SharedBatchNorm2d(nn.BatchNorm2d):
    """The naive baseline: one BN for all switches, sliced like the conv weights.

    The paper shows it makes narrow switches collapse at test time, because the
    running statistics mix the feature distributions of every width.
    """

    def __init__(self, channels_list: Sequence[int]) -> None:
        super().__init__(max(channels_list))
        self.channels_list = tuple(channels_list)

    def forward(self, x: torch.Tensor, idx: int) -> torch.Tensor:  # type: ignore[override]
        c = self.channels_list[idx]
        if self.training:
            self.num_batches_tracked.add_(1)
        # Slices of the running buffers are views: training updates them in place.
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            self.momentum,
            self.eps,
        )

    def export(self, idx: int, share: bool = False) -> nn.BatchNorm2d:
        return _copy_bn(self, self.channels_list[idx])  # copied even when sharing, as above


class SlimSequential(nn.ModuleList):
    """``nn.Sequential`` for slimmable code: passes the switch index to the layers that take one.

    Being a ModuleList keeps the numeric state-dict keys of the official code.
    """

    def forward(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        for layer in self:
            x = layer(x, idx) if _takes_switch(layer) else layer(x)
        return x

    def export(self, idx: int, share: bool = False) -> nn.Sequential:
        return nn.Sequential(*(export_layer(layer, idx, share) for layer in self))


def _takes_switch(layer: nn.Module) -> bool:
    return hasattr(layer, "export")


def export_layer(layer: nn.Module, idx: int, share: bool = False) -> nn.Module:
    """The plain module for switch ``idx``.

    Slimmable layers export their slice; plain layers are the same at every
    switch (e.g. S-MobileNet v2's shared last BN and classifier) and are copied
    so the exported module owns its weights -- or, with ``share``, used as they are.
    """
    if _takes_switch(layer):
        return layer.export(idx, share)
    return layer if share else copy.deepcopy(layer)
