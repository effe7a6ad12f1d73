"""A six-layer slimmable conv net for small images (the paper's S-BN experiment in miniature).

Small enough to train at four widths in seconds on a CPU, so the test that
reproduces the paper's shared-BN collapse (its Figure 2) stays fast.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .blocks import SlimBlock
from .net import SlimmableNet
from .registry import register_model
from .slimmable import SlimmableConv2d, SlimmableLinear, SlimSequential

__all__ = ["SlimConvNet"]

# (channels, stride) of the six 3x3 conv layers.
_LAYERS = ((32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1))


class SlimConvNet(SlimmableNet):
    """Six conv-BN-ReLU layers, global average pool, slimmable linear classifier."""

    def __init__(self, arch: str = "s_convnet6", **kwargs) -> None:
        super().__init__(arch, **kwargs)
        n = len(self.widths)
        channels = [self.in_channels] * n
        features: list[nn.Module] = []
        for c, stride in _LAYERS:
            outp = [max(1, int(c * w)) for w in self.widths]
            layer = [SlimmableConv2d(channels, outp, 3, stride, 1), self.norm(outp), nn.ReLU(inplace=True)]
            features.append(SlimBlock(SlimSequential(layer)))
            channels = outp
        features.append(nn.AdaptiveAvgPool2d(1))
        self.features = SlimSequential(features)
        self.classifier = SlimSequential([SlimmableLinear(channels, [self.num_classes] * n)])


@register_model
def s_convnet6(
    num_classes: int = 10, input_size: int = 16, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), **kw
) -> SlimConvNet:
    return SlimConvNet(num_classes=num_classes, input_size=input_size, widths=widths, **kw)
