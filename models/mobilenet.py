"""Slimmable MobileNet v1 and v2 (Yu et al., ICLR 2019, https://arxiv.org/abs/1812.08928).

Layouts and channel rules follow the official code (JiahuiYu/slimmable_networks):
``make_divisible(c * w, 8)`` everywhere, S-MobileNet v2's last 1x1 conv always
outputs 1280 channels with one shared BN, and a plain Linear classifier.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .blocks import SlimBlock
from .net import SlimmableNet
from .registry import register_model
from .slimmable import SlimmableConv2d, SlimmableLinear, SlimSequential, make_divisible

__all__ = ["SlimMobileNetV1", "SlimMobileNetV2"]

# (channels, repeats, stride) of MobileNet v1's depthwise-separable blocks.
_V1_BLOCKS = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))
# (expansion, channels, repeats, stride) of MobileNet v2's inverted residuals.
_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _scaled(channels: int, widths: Sequence[float]) -> list[int]:
    return [make_divisible(channels * w) for w in widths]


def _conv_bn_act(
    norm, inp: list[int], outp: list[int], kernel: int, stride: int, depthwise: bool = False
) -> list[nn.Module]:
    return [
        SlimmableConv2d(inp, outp, kernel, stride, kernel // 2, depthwise=depthwise),
        norm(outp),
        nn.ReLU6(inplace=True),
    ]


class SlimMobileNetV1(SlimmableNet):
    """S-MobileNet v1: a stem conv and 13 depthwise-separable blocks."""

    def __init__(self, arch: str = "s_mobilenet_v1", stem_stride: int = 2, **kwargs) -> None:
        super().__init__(arch, **kwargs)
        n = len(self.widths)
        channels = _scaled(32, self.widths)
        features: list[nn.Module] = [
            SlimSequential(_conv_bn_act(self.norm, [self.in_channels] * n, channels, 3, stem_stride))
        ]
        for c, repeats, stride in _V1_BLOCKS:
            outp = _scaled(c, self.widths)
            for i in range(repeats):
                body = _conv_bn_act(self.norm, channels, channels, 3, stride if i == 0 else 1, depthwise=True)
                body += _conv_bn_act(self.norm, channels, outp, 1, 1)
                features.append(SlimBlock(SlimSequential(body)))
                channels = outp
        features.append(nn.AdaptiveAvgPool2d(1))
        self.features = SlimSequential(features)
        self.classifier = SlimSequential([SlimmableLinear(channels, [self.num_classes] * n)])


class SlimMobileNetV2(SlimmableNet):
    """S-MobileNet v2: inverted residuals, a shared 1280-channel head conv and a plain Linear."""

    def __init__(self, arch: str = "s_mobilenet_v2", stem_stride: int = 2, **kwargs) -> None:
        super().__init__(arch, **kwargs)
        n = len(self.widths)
        channels = _scaled(32, self.widths)
        features: list[nn.Module] = [
            SlimSequential(_conv_bn_act(self.norm, [self.in_channels] * n, channels, 3, stem_stride))
        ]
        for t, c, repeats, stride in _V2_BLOCKS:
            outp = _scaled(c, self.widths)
            for i in range(repeats):
                hidden = [ch * t for ch in channels]
                body: list[nn.Module] = []
                if t != 1:
                    body += _conv_bn_act(self.norm, channels, hidden, 1, 1)
                block_stride = stride if i == 0 else 1
                body += _conv_bn_act(self.norm, hidden, hidden, 3, block_stride, depthwise=True)
                body += [SlimmableConv2d(hidden, outp, 1), self.norm(outp)]
                residual = block_stride == 1 and channels == outp
                features.append(SlimBlock(SlimSequential(body), residual=residual))
                channels = outp
        head = 1280  # fixed for width <= 1.0, as in the official code
        features.append(
            SlimSequential([SlimmableConv2d(channels, [head] * n, 1), nn.BatchNorm2d(head), nn.ReLU6(inplace=True)])
        )
        features.append(nn.AdaptiveAvgPool2d(1))
        self.features = SlimSequential(features)
        self.classifier = SlimSequential([nn.Linear(head, self.num_classes)])


@register_model
def s_mobilenet_v1(
    num_classes: int = 1000, input_size: int = 224, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), **kw
) -> SlimMobileNetV1:
    return SlimMobileNetV1(num_classes=num_classes, input_size=input_size, widths=widths, **kw)


@register_model
def s_mobilenet_v2(
    num_classes: int = 1000, input_size: int = 224, widths: Sequence[float] = (0.35, 0.5, 0.75, 1.0), **kw
) -> SlimMobileNetV2:
    return SlimMobileNetV2(num_classes=num_classes, input_size=input_size, widths=widths, **kw)


@register_model
def s_mobilenet_v2_cifar(
    num_classes: int = 10, input_size: int = 32, widths: Sequence[float] = (0.35, 0.5, 0.75, 1.0), **kw
) -> SlimMobileNetV2:
    """S-MobileNet v2 for 32x32 inputs: a stride-1 stem (CIFAR style), otherwise unchanged."""
    return SlimMobileNetV2(
        arch="s_mobilenet_v2_cifar", stem_stride=1, num_classes=num_classes, input_size=input_size, widths=widths, **kw
    )
