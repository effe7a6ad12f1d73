"""Universally slimmable operators and networks (Yu & Huang, "Universally Slimmable Networks and
Improved Training Techniques", ICCV 2019, arXiv 1903.05134).

A universally slimmable (US) layer runs at any width ``w`` in a range: it uses the leading
``make_divisible(c_max * w / ratio) * ratio`` channels of its widest weights (the official rule;
``ratio`` keeps MobileNet v2's expanded channels a multiple of the expansion). Batch norm cannot be
shared across widths (the paper's S-BN finding), and one private BN per width is impossible for
infinitely many widths, so a US BN has one affine weight/bias pair (sliced like the convs) and
*post-training statistics*: mean and variance computed after training for each width that will be
served ("calibration", ``models.training.calibrate``). Statistics live in ``bn.<i>`` slots, one per
width of the net's declared list, exactly as the official checkpoints store them.

The width travels as a value, :class:`USWidth` (no global state): the width, the BN slot whose
statistics to use, and whether to accumulate them (calibration). In eval mode a width without
calibrated statistics is refused rather than served with statistics that do not belong to it (the
official repository's issues show accuracy collapsing when that happens).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .net import SlimmableNet
from .slimmable import SharedSliceConv2d, SharedSliceLinear, make_divisible, with_params
from .widths import WIDTH_TOLERANCE, match_width

__all__ = ["USWidth", "USConv2d", "USLinear", "USBatchNorm2d", "UniversalNet", "us_channels"]


class USWidth(NamedTuple):
    """What US layers receive instead of a switch index."""

    value: float
    slot: int | None = None  # BN statistics slot (index in the net's declared widths); None: batch statistics
    accumulate: bool = False  # training mode only: add this batch to the slot's statistics (calibration)


def us_channels(max_channels: int, width: float, ratio: int = 1) -> int:
    """Channels of a layer with ``max_channels`` at its widest, run at ``width`` (official rule)."""
    return make_divisible(max_channels * width / ratio) * ratio


class USConv2d(nn.Conv2d):
    """A conv with ``in_max`` -> ``out_max`` channels at its widest; ``us`` says which sides scale."""

    def __init__(self, in_max: int, out_max: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 depthwise: bool = False, bias: bool = False, us: tuple[bool, bool] = (True, True),
                 ratio: tuple[int, int] = (1, 1)) -> None:
        super().__init__(in_max, out_max, kernel_size, stride, padding, groups=in_max if depthwise else 1, bias=bias)
        self.depthwise = depthwise
        self.us = us
        self.ratio = ratio

    def channels(self, width: float) -> tuple[int, int]:
        in_c = us_channels(self.in_channels, width, self.ratio[0]) if self.us[0] else self.in_channels
        out_c = us_channels(self.out_channels, width, self.ratio[1]) if self.us[1] else self.out_channels
        return in_c, out_c

    def switch_params(self, sw: USWidth) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        in_c, out_c = self.channels(sw.value)
        weight = self.weight[:out_c, :1] if self.depthwise else self.weight[:out_c, :in_c]
        bias = self.bias[:out_c] if self.bias is not None else None
        return weight, bias, in_c if self.depthwise else 1

    def forward(self, x: torch.Tensor, sw: USWidth) -> torch.Tensor:  # type: ignore[override]
        weight, bias, groups = self.switch_params(sw)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def export(self, sw: USWidth, share: bool = False) -> nn.Module:
        weight, bias, groups = self.switch_params(sw)
        if share:
            return SharedSliceConv2d(self, weight.shape[0], weight.shape[1], groups)
        in_c, out_c = self.channels(sw.value)
        conv = nn.Conv2d(in_c, out_c, self.kernel_size, self.stride, self.padding, groups=groups, bias=bias is not None)
        return with_params(conv, weight, bias)


class USLinear(nn.Linear):
    """A linear layer whose input (and, if ``us[1]``, output) features scale with the width."""

    def __init__(self, in_max: int, out_max: int, bias: bool = True, us: tuple[bool, bool] = (True, False)) -> None:
        super().__init__(in_max, out_max, bias=bias)
        self.us = us

    def switch_params(self, sw: USWidth) -> tuple[torch.Tensor, torch.Tensor | None]:
        in_f = us_channels(self.in_features, sw.value) if self.us[0] else self.in_features
        out_f = us_channels(self.out_features, sw.value) if self.us[1] else self.out_features
        return self.weight[:out_f, :in_f], self.bias[:out_f] if self.bias is not None else None

    def forward(self, x: torch.Tensor, sw: USWidth) -> torch.Tensor:  # type: ignore[override]
        weight, bias = self.switch_params(sw)
        return F.linear(x, weight, bias)

    def export(self, sw: USWidth, share: bool = False) -> nn.Module:
        weight, bias = self.switch_params(sw)
        if share:
            return SharedSliceLinear(self, weight.shape[0], weight.shape[1])
        return with_params(nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None), weight, bias)


class USBatchNorm2d(nn.BatchNorm2d):
    """Shared affine parameters, private statistics per declared width (``bn.<i>``, official layout)."""

    def __init__(self, max_channels: int, widths: Sequence[float], ratio: int = 1) -> None:
        super().__init__(max_channels, affine=True, track_running_stats=False)
        self.ratio = ratio
        self.bn = nn.ModuleList(nn.BatchNorm2d(us_channels(max_channels, w, ratio), affine=False) for w in widths)

    def channels(self, width: float) -> int:
        return us_channels(self.num_features, width, self.ratio)

    def forward(self, x: torch.Tensor, sw: USWidth) -> torch.Tensor:  # type: ignore[override]
        c = self.channels(sw.value)
        weight, bias = self.weight[:c], self.bias[:c]
        if self.training:
            if sw.accumulate and sw.slot is not None:
                stats = self.bn[sw.slot]
                stats.num_batches_tracked.add_(1)
                # A cumulative average over the calibration batches (the official cumulative_bn_stats).
                momentum = 1.0 / float(stats.num_batches_tracked)
                return F.batch_norm(x, stats.running_mean, stats.running_var, weight, bias, True, momentum, self.eps)
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if sw.slot is None:
            raise ValueError(f"width {sw.value:g} has no calibrated BN statistics")
        stats = self.bn[sw.slot]
        return F.batch_norm(x, stats.running_mean, stats.running_var, weight, bias, False, 0.0, self.eps)

    def reset_slot(self, slot: int) -> None:
        self.bn[slot].reset_running_stats()

    def export(self, sw: USWidth, share: bool = False) -> nn.BatchNorm2d:
        # copied even when sharing: the width's statistics and affine slice, channels-sized, which folding consumes
        if sw.slot is None:
            raise ValueError(f"width {sw.value:g} has no calibrated BN statistics")
        c = self.channels(sw.value)
        stats = self.bn[sw.slot]
        bn = nn.BatchNorm2d(c, eps=self.eps)
        with torch.no_grad():
            bn.weight.copy_(self.weight[:c])
            bn.bias.copy_(self.bias[:c])
            bn.running_mean.copy_(stats.running_mean[:c])
            bn.running_var.copy_(stats.running_var[:c])
            bn.num_batches_tracked.copy_(stats.num_batches_tracked)
        return bn.eval()


class UniversalNet(SlimmableNet):
    """A network that runs at any width in ``width_range``.

    ``widths`` are its BN statistics slots (the official checkpoints' ``width_mult_list``); of those,
    ``calibrated`` are the ones whose statistics were computed for the trained weights (stored in
    checkpoint metadata: the official files do not say). Eval mode and export accept calibrated
    widths only; training accepts any width in the range (batch statistics).
    """

    def __init__(self, arch: str, widths: Sequence[float], width_range: Sequence[float],
                 calibrated: Sequence[float] = (), bn_mode: str = "universal", **kwargs) -> None:
        if bn_mode != "universal":
            raise ValueError(f"{arch} is universally slimmable: bn_mode must be 'universal', got {bn_mode!r}")
        # The base class knows the slimmable BN modes only; its norm factory is replaced below.
        super().__init__(arch, widths, bn_mode="switchable", **kwargs)
        self.bn_mode = "universal"
        low, high = (float(w) for w in width_range)
        if not 0 < low <= high:
            raise ValueError(f"width range must satisfy 0 < low <= high, got {width_range}")
        outside = [w for w in self.widths if not low - WIDTH_TOLERANCE <= w <= high + WIDTH_TOLERANCE]
        if outside:
            raise ValueError(f"widths {outside} lie outside the width range [{low:g}, {high:g}]")
        self.width_range = (low, high)
        unknown = [float(w) for w in calibrated if self.slot_of(float(w)) is None]
        if unknown:
            raise ValueError(f"calibrated widths {unknown} are not among the declared widths {self.widths}")
        self.calibrated = tuple(sorted(float(w) for w in calibrated))

        def norm(max_channels: int, ratio: int = 1) -> USBatchNorm2d:
            return USBatchNorm2d(max_channels, self.widths, ratio)

        self.norm = norm

    def config(self) -> dict:
        return {**super().config(), "width_range": list(self.width_range), "calibrated": list(self.calibrated)}

    def slot_of(self, width: float) -> int | None:
        """The BN slot of ``width`` when it is a declared width, else None."""
        declared = match_width(self.widths, width)
        return None if declared is None else self.widths.index(declared)

    def switch_for(self, width: float, accumulate: bool = False) -> USWidth:
        """The :class:`USWidth` for ``width``; ``ValueError`` outside the range, or (eval mode) uncalibrated."""
        if not self.training:
            return self.calibrated_switch(width)
        slot = self.slot_of(self._in_range(width))
        return USWidth(float(width), slot, accumulate and slot is not None)

    def calibrated_switch(self, width: float) -> USWidth:
        """The :class:`USWidth` of a calibrated width, whatever the mode; ``ValueError`` otherwise."""
        slot = self.slot_of(self._in_range(width))
        if slot is None or match_width(self.calibrated, width) is None:
            raise ValueError(f"width {width:g} is not calibrated; calibrated widths: "
                             f"{', '.join(f'{w:g}' for w in self.calibrated) or 'none'} "
                             f"(widthwise calibrate computes BN statistics for more)")
        return USWidth(self.widths[slot], slot)

    def _in_range(self, width: float) -> float:
        width = float(width)
        low, high = self.width_range
        if not low - WIDTH_TOLERANCE <= width <= high + WIDTH_TOLERANCE:
            raise ValueError(f"width {width:g} is outside {self.arch}'s range [{low:g}, {high:g}]")
        return width

    def switch_for_slot(self, width: float) -> int:
        """The BN slot of declared width ``width``; ``ValueError`` naming the declared ones otherwise."""
        slot = self.slot_of(float(width))
        if slot is None:
            raise ValueError(f"width {float(width):g} has no BN statistics slot; declared: "
                             f"{', '.join(f'{w:g}' for w in self.widths)} (with_widths adds slots)")
        return slot

    def width_index(self, width: float) -> int:
        return self.switch_for(width).slot

    def forward(self, x: torch.Tensor, width: float, accumulate: bool = False) -> torch.Tensor:  # type: ignore[override]
        sw = self.switch_for(width, accumulate)
        return self.forward_head(self.forward_features(x, sw), sw)

    def _export_arg(self, width: float) -> USWidth:
        return self.calibrated_switch(width)

    def us_norms(self) -> list[USBatchNorm2d]:
        return [m for m in self.modules() if isinstance(m, USBatchNorm2d)]

    def slots_with_statistics(self) -> tuple[float, ...]:
        """Declared widths whose BN statistics differ from a fresh BN's (mean 0, variance 1) somewhere."""
        norms = self.us_norms()
        return tuple(w for i, w in enumerate(self.widths)
                     if any(bool(n.bn[i].running_mean.any()) or bool((n.bn[i].running_var != 1).any()) for n in norms))
