"""Universally slimmable MobileNet v1/v2 (US-Nets, Yu & Huang, ICCV 2019) and a small US conv net.

Layouts follow the official code (JiahuiYu/slimmable_networks, ``models/us_mobilenet_v*.py``), so
its calibrated checkpoints load strictly: the stem conv's input side does not scale, MobileNet v2's
expanded channels scale in multiples of the expansion ratio, its 1280-channel head conv and BN and
its classifier are plain, and MobileNet v1's classifier reads a scaled number of features.
Reference layout and MACs: tests/data/us_mobilenet_layout.json (see tests/data/README.md).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .blocks import SlimBlock
from .registry import register_model
from .slimmable import SlimSequential
from .universal import UniversalNet, USConv2d, USLinear
from .widths import width_grid

__all__ = ["USMobileNetV1", "USMobileNetV2", "USConvNet"]

_V1_BLOCKS = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))
_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# The official width_mult_list of each checkpoint: the BN statistics slots, 0.025 apart.
US_V1_WIDTHS = width_grid(0.25, 1.0, 0.025)
US_V2_WIDTHS = width_grid(0.35, 1.0, 0.025)


def _stem(net: UniversalNet, channels: int, stride: int) -> SlimSequential:
    """Both MobileNets' first layer: a 3x3 conv whose input side (the image) does not scale, BN, ReLU6."""
    return SlimSequential([USConv2d(net.in_channels, channels, 3, stride, 1, us=(False, True)), net.norm(channels),
                           nn.ReLU6(inplace=True)])


class USMobileNetV1(UniversalNet):
    def __init__(self, arch: str = "us_mobilenet_v1", stem_stride: int = 2, **kwargs) -> None:
        super().__init__(arch, **kwargs)
        channels = 32
        features: list[nn.Module] = [_stem(self, channels, stem_stride)]
        for c, repeats, stride in _V1_BLOCKS:
            for i in range(repeats):
                body = [USConv2d(channels, channels, 3, stride if i == 0 else 1, 1, depthwise=True),
                        self.norm(channels), nn.ReLU6(inplace=True),
                        USConv2d(channels, c, 1), self.norm(c), nn.ReLU6(inplace=True)]
                features.append(SlimBlock(SlimSequential(body)))
                channels = c
        features.append(nn.AdaptiveAvgPool2d(1))
        self.features = SlimSequential(features)
        self.classifier = SlimSequential([USLinear(channels, self.num_classes, us=(True, False))])


class USMobileNetV2(UniversalNet):
    def __init__(self, arch: str = "us_mobilenet_v2", stem_stride: int = 2, **kwargs) -> None:
        super().__init__(arch, **kwargs)
        channels = 32
        features: list[nn.Module] = [_stem(self, channels, stem_stride)]
        for t, c, repeats, stride in _V2_BLOCKS:
            for i in range(repeats):
                block_stride = stride if i == 0 else 1
                hidden = channels * t
                body: list[nn.Module] = []
                if t != 1:
                    body += [USConv2d(channels, hidden, 1, ratio=(1, t)), self.norm(hidden, t), nn.ReLU6(inplace=True)]
                body += [USConv2d(hidden, hidden, 3, block_stride, 1, depthwise=True, ratio=(t, t)),
                         self.norm(hidden, t), nn.ReLU6(inplace=True),
                         USConv2d(hidden, c, 1, ratio=(t, 1)), self.norm(c)]
                residual = block_stride == 1 and channels == c
                features.append(SlimBlock(SlimSequential(body), residual=residual))
                channels = c
        head = 1280  # fixed, as in the official code for widths <= 1
        features.append(SlimSequential([USConv2d(channels, head, 1, us=(True, False)), nn.BatchNorm2d(head),
                                        nn.ReLU6(inplace=True)]))
        features.append(nn.AdaptiveAvgPool2d(1))
        self.features = SlimSequential(features)
        self.classifier = SlimSequential([nn.Linear(head, self.num_classes)])


# (channels, stride) of the small net's six 3x3 conv layers, as models/convnet.py.
_CONVNET_LAYERS = ((32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1))


class USConvNet(UniversalNet):
    """Six US conv-BN-ReLU layers and a US linear classifier: trains in seconds on digits (tests)."""

    def __init__(self, arch: str = "us_convnet6", **kwargs) -> None:
        super().__init__(arch, **kwargs)
        channels = self.in_channels
        features: list[nn.Module] = []
        for i, (c, stride) in enumerate(_CONVNET_LAYERS):
            conv = USConv2d(channels, c, 3, stride, 1, us=(i > 0, True))
            features.append(SlimBlock(SlimSequential([conv, self.norm(c), nn.ReLU(inplace=True)])))
            channels = c
        features.append(nn.AdaptiveAvgPool2d(1))
        self.features = SlimSequential(features)
        self.classifier = SlimSequential([USLinear(channels, self.num_classes, us=(True, False))])


@register_model
def us_mobilenet_v1(num_classes: int = 1000, input_size: int = 224, widths: Sequence[float] = US_V1_WIDTHS,
                    width_range: Sequence[float] = (0.25, 1.0), **kw) -> USMobileNetV1:
    return USMobileNetV1(num_classes=num_classes, input_size=input_size, widths=widths, width_range=width_range, **kw)


@register_model
def us_mobilenet_v2(num_classes: int = 1000, input_size: int = 224, widths: Sequence[float] = US_V2_WIDTHS,
                    width_range: Sequence[float] = (0.35, 1.0), **kw) -> USMobileNetV2:
    return USMobileNetV2(num_classes=num_classes, input_size=input_size, widths=widths, width_range=width_range, **kw)


@register_model
def us_mobilenet_v2_cifar(num_classes: int = 10, input_size: int = 32, widths: Sequence[float] = US_V2_WIDTHS,
                          width_range: Sequence[float] = (0.35, 1.0), **kw) -> USMobileNetV2:
    """US-MobileNet v2 for small inputs: a stride-1 stem, otherwise unchanged."""
    return USMobileNetV2(arch="us_mobilenet_v2_cifar", stem_stride=1, num_classes=num_classes, input_size=input_size,
                         widths=widths, width_range=width_range, **kw)


@register_model
def us_convnet6(num_classes: int = 10, input_size: int = 16, widths: Sequence[float] = width_grid(0.25, 1.0, 0.05),
                width_range: Sequence[float] = (0.25, 1.0), **kw) -> USConvNet:
    return USConvNet(num_classes=num_classes, input_size=input_size, widths=widths, width_range=width_range, **kw)
