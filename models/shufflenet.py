"""S-ShuffleNet, the paper's fourth architecture (Table 3: widths 0.5x/1.0x/2.0x at 224x224).

ShuffleNet (v1) with 3 groups: each unit splits its input into three groups for the 1x1
convolutions, shuffles channels, runs a 3x3 depthwise convolution, and either adds the input back
(stride 1) or concatenates an average-pooled copy of it (stride 2). Channel counts are
``int(c * width)`` as in the official code, so widths above 1 (the 2.0x switch) are as valid as
widths below. Module and parameter names follow the official checkpoints (``head_<g>``,
``features.<i>.a_<g>``/``b``/``c_<g>``, ``classifier.0``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .net import SlimmableNet
from .registry import register_model
from .slimmable import SlimmableConv2d, SlimmableLinear, SlimSequential

__all__ = ["SlimShuffleNet", "s_shufflenet", "ChannelShuffle"]

GROUPS = 3
BOTTLENECK = 4  # the depthwise stage has a quarter of the unit's output channels
# (output channels at 1.0x, units) per stage; the first unit of each stage has stride 2.
_STAGES = ((240, 4), (480, 8), (960, 4))


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups (the same at every width)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        return x.reshape(-1, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(-1, c, h, w)


def _unit(x: torch.Tensor, a: Sequence[Callable], b: Callable, c: Sequence[Callable], residual: bool,
          split_input: bool, pool: nn.Module | None) -> torch.Tensor:
    """One ShuffleNet unit over callables: the slimmable unit and its export share this."""
    parts = torch.chunk(x, GROUPS, dim=1) if split_input else (x,) * GROUPS
    out = b(torch.cat([branch(part) for branch, part in zip(a, parts)], 1))
    out = torch.cat([branch(part) for branch, part in zip(c, torch.chunk(out, GROUPS, dim=1))], 1)
    if residual:
        return torch.relu(out + x)
    return torch.cat([torch.relu(out), pool(x)], 1)


def _divisible(channels: Sequence[int], by: int, what: str) -> list[int]:
    if any(ch % by for ch in channels):
        raise ValueError(f"S-ShuffleNet needs {what} divisible by {by}, got {list(channels)}: choose other widths")
    return [ch // by for ch in channels]


class SlimShuffleUnit(nn.Module):
    """A slimmable ShuffleNet unit (``forward(x, idx)``, ``export(idx)``)."""

    def __init__(self, norm, inp: list[int], outp: list[int], stride: int, split_input: bool) -> None:
        super().__init__()
        self.residual = stride == 1 and inp == outp
        block_outp = outp if self.residual else [o - i for o, i in zip(outp, inp)]
        # The first unit reads the stem's output whole in every group; the others read one group each.
        self.split_input = split_input
        inp_group = _divisible(inp, GROUPS, "input channels") if split_input else inp
        mid = _divisible(outp, BOTTLENECK, "output channels")
        mid_group = _divisible(mid, GROUPS, "bottleneck channels")
        out_group = _divisible(block_outp, GROUPS, "unit output channels")
        for g in range(GROUPS):
            setattr(self, f"a_{g}", SlimSequential([SlimmableConv2d(inp_group, mid_group, 1), norm(mid_group),
                                                    nn.ReLU(inplace=True)]))
        self.b = SlimSequential([ChannelShuffle(GROUPS), SlimmableConv2d(mid, mid, 3, stride, 1, depthwise=True),
                                 norm(mid)])
        for g in range(GROUPS):
            setattr(self, f"c_{g}", SlimSequential([SlimmableConv2d(mid_group, out_group, 1), norm(out_group)]))
        self.pool = None if self.residual else nn.AvgPool2d(3, 2, 1)

    def _branches(self, prefix: str) -> list[nn.Module]:
        return [getattr(self, f"{prefix}_{g}") for g in range(GROUPS)]

    def forward(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        a = [lambda t, m=m: m(t, idx) for m in self._branches("a")]
        c = [lambda t, m=m: m(t, idx) for m in self._branches("c")]
        return _unit(x, a, lambda t: self.b(t, idx), c, self.residual, self.split_input, self.pool)

    def export(self, idx: int, share: bool = False) -> "PlainShuffleUnit":
        return PlainShuffleUnit([m.export(idx, share) for m in self._branches("a")], self.b.export(idx, share),
                                [m.export(idx, share) for m in self._branches("c")], self.residual, self.split_input)


class PlainShuffleUnit(nn.Module):
    """One switch of a :class:`SlimShuffleUnit` as plain modules (BN folding and ONNX export see Sequentials)."""

    def __init__(self, a: list[nn.Module], b: nn.Module, c: list[nn.Module], residual: bool, split_input: bool) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.ModuleList(a), b, nn.ModuleList(c)
        self.residual, self.split_input = residual, split_input
        self.pool = None if residual else nn.AvgPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _unit(x, list(self.a), self.b, list(self.c), self.residual, self.split_input, self.pool)


class _GroupedStem(nn.Module):
    """The exported stem: three group convs over the whole image, concatenated."""

    def __init__(self, heads: list[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], 1)


class SlimShuffleNet(SlimmableNet):
    """S-ShuffleNet (g = 3): a grouped stem, 16 units in three stages, global pooling, a slimmable Linear."""

    def __init__(self, arch: str = "s_shufflenet", **kwargs) -> None:
        super().__init__(arch, **kwargs)
        n = len(self.widths)
        channels = [int(24 * w) for w in self.widths]
        stem_group = _divisible(channels, GROUPS, "stem channels")
        for g in range(GROUPS):
            setattr(self, f"head_{g}", SlimSequential([
                SlimmableConv2d([self.in_channels] * n, stem_group, 3, 2, 1), self.norm(stem_group),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            ]))
        units: list[nn.Module] = []
        for c, count in _STAGES:
            outp = [int(c * w) for w in self.widths]
            for i in range(count):
                units.append(SlimShuffleUnit(self.norm, channels, outp, 2 if i == 0 else 1, split_input=bool(units)))
                channels = outp
        units.append(nn.AdaptiveAvgPool2d(1))  # the official AvgPool2d(input_size // 32), for any input size
        self.features = SlimSequential(units)
        self.classifier = SlimSequential([SlimmableLinear(channels, [self.num_classes] * n)])

    def _heads(self) -> list[nn.Module]:
        return [getattr(self, f"head_{g}") for g in range(GROUPS)]

    def forward_features(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        x = torch.cat([head(x, idx) for head in self._heads()], 1)
        return torch.flatten(self.features(x, idx), 1)

    def switch(self, width: float, fold_bn: bool = False, share: bool = False) -> nn.Module:
        from .fold import fold_batchnorm

        idx = self.width_index(width)
        module = nn.Sequential(_GroupedStem([h.export(idx, share) for h in self._heads()]),
                               self.features.export(idx, share), nn.Flatten(1),
                               self.classifier.export(idx, share)).eval()
        return fold_batchnorm(module) if fold_bn else module


@register_model
def s_shufflenet(num_classes: int = 1000, input_size: int = 224, widths: Sequence[float] = (0.5, 1.0, 2.0),
                 **kw) -> SlimShuffleNet:
    return SlimShuffleNet(widths=widths, num_classes=num_classes, input_size=input_size, **kw)
