"""Slimmable ResNet-50 (Yu et al., ICLR 2019, https://arxiv.org/abs/1812.08928).

Layout follows the official code: bottleneck blocks with the stride on the 3x3
conv, a projection shortcut (conv + S-BN) where shape changes, and channel
counts ``int(c * w)`` (paper fact 4).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .blocks import SlimBlock
from .net import SlimmableNet
from .registry import register_model
from .slimmable import SlimmableConv2d, SlimmableLinear, SlimSequential

__all__ = ["SlimResNet"]

_STAGE_WIDTHS = (64, 128, 256, 512)
_DEPTHS = {50: (3, 4, 6, 3)}


class SlimResNet(SlimmableNet):
    """S-ResNet with bottleneck blocks (expansion 4)."""

    def __init__(self, depth: int = 50, arch: str = "s_resnet50", **kwargs) -> None:
        super().__init__(arch, **kwargs)
        n = len(self.widths)
        channels = [int(64 * w) for w in self.widths]
        stem = [
            SlimmableConv2d([self.in_channels] * n, channels, 7, 2, 3),
            self.norm(channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        features: list[nn.Module] = [SlimSequential(stem)]
        for stage, repeats in enumerate(_DEPTHS[depth]):
            outp = [int(_STAGE_WIDTHS[stage] * w * 4) for w in self.widths]
            for i in range(repeats):
                stride = 2 if i == 0 and stage != 0 else 1
                features.append(self._bottleneck(channels, outp, stride))
                channels = outp
        features.append(nn.AdaptiveAvgPool2d(1))
        self.features = SlimSequential(features)
        self.classifier = SlimSequential([SlimmableLinear(channels, [self.num_classes] * n)])

    def _bottleneck(self, inp: list[int], outp: list[int], stride: int) -> SlimBlock:
        mid = [c // 4 for c in outp]
        body = SlimSequential([
            SlimmableConv2d(inp, mid, 1),
            self.norm(mid),
            nn.ReLU(inplace=True),
            SlimmableConv2d(mid, mid, 3, stride, 1),
            self.norm(mid),
            nn.ReLU(inplace=True),
            SlimmableConv2d(mid, outp, 1),
            self.norm(outp),
        ])
        shortcut = None
        if stride != 1 or inp != outp:
            shortcut = SlimSequential([SlimmableConv2d(inp, outp, 1, stride), self.norm(outp)])
        return SlimBlock(body, shortcut, residual=True, post_relu=True)


@register_model
def s_resnet50(
    num_classes: int = 1000, input_size: int = 224, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), **kw
) -> SlimResNet:
    return SlimResNet(depth=50, num_classes=num_classes, input_size=input_size, widths=widths, **kw)
