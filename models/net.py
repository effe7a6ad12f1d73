"""The base class of every slimmable network: width lookup, forward stages, export."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .fold import fold_batchnorm
from .slimmable import SharedBatchNorm2d, SwitchableBatchNorm2d
from .widths import match_width

__all__ = ["SlimmableNet", "BN_MODES"]

BN_MODES = ("switchable", "shared")


def norm_factory(bn_mode: str):
    """The BN class for ``bn_mode``: private BN per switch, or one shared (the paper's failing baseline)."""
    if bn_mode == "switchable":
        return SwitchableBatchNorm2d
    if bn_mode == "shared":
        return SharedBatchNorm2d
    raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")


class SlimmableNet(nn.Module):
    """One set of weights, several widths.

    Subclasses build ``self.features`` and ``self.classifier`` (both take the
    switch index) and call ``super().__init__`` first.

    Args:
        arch: registry name (stored in checkpoints).
        widths: width multipliers; kept sorted ascending.
        num_classes: classifier outputs.
        input_size: nominal square input side in pixels.
        in_channels: image channels.
        bn_mode: ``"switchable"`` (S-BN) or ``"shared"``.
    """

    def __init__(
        self,
        arch: str,
        widths: Sequence[float],
        num_classes: int,
        input_size: int,
        in_channels: int = 3,
        bn_mode: str = "switchable",
    ) -> None:
        super().__init__()
        widths = tuple(float(w) for w in widths)
        if not widths or any(w <= 0 for w in widths):
            raise ValueError(f"widths must be positive, got {widths}")
        if list(widths) != sorted(set(widths)):
            raise ValueError(f"widths must be strictly ascending, got {widths}")
        self.arch = arch
        self.widths = widths
        self.num_classes = num_classes
        self.input_size = input_size
        self.in_channels = in_channels
        self.bn_mode = bn_mode
        self.norm = norm_factory(bn_mode)

    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (stored in checkpoints)."""
        return {
            "arch": self.arch,
            "widths": list(self.widths),
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            "bn_mode": self.bn_mode,
        }

    def width_index(self, width: float) -> int:
        """Index of ``width`` in ``self.widths``; ``ValueError`` if it is not declared."""
        matched = match_width(self.widths, width)
        if matched is None:
            raise ValueError(f"width {width!r} is not one of the declared widths {self.widths}")
        return self.widths.index(matched)

    def forward_features(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        return torch.flatten(self.features(x, idx), 1)

    def forward_head(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        return self.classifier(x, idx)

    def forward(self, x: torch.Tensor, width: float) -> torch.Tensor:
        idx = self.width_index(width)
        return self.forward_head(self.forward_features(x, idx), idx)

    def _export_arg(self, width: float):
        """What the layers' ``export`` takes for ``width``: the switch index."""
        return self.width_index(width)

    def at_width(self, width: float) -> nn.Module:
        """This net at ``width`` as a plain module that copies none of its weights: each call reads the
        leading slices of this net's tensors (``switch(width, fold_bn=True, share=True)``), as the paper's
        one set of weights does, so every width together costs the widest's weights once plus each
        width's BN scale and shift. BN is folded at each call (:class:`~models.slimmable.FoldOnCallConv2d`).
        An undeclared or uncalibrated width is refused here, not at the first batch."""
        return self.switch(width, fold_bn=True, share=True)

    def switch(self, width: float, fold_bn: bool = False, share: bool = False) -> nn.Module:
        """A plain ``nn.Module`` (Conv2d/BatchNorm2d/Linear) computing this net at ``width``, in eval mode.

        The module owns copies of the sliced weights, or with ``share`` reads this net's own tensors
        (its sliced layers hold the net's Parameters; layers that are the same at every width are
        the net's own modules, so this puts those in eval mode too). With ``fold_bn`` every BN is folded
        into its preceding conv.
        """
        idx = self._export_arg(width)
        module = nn.Sequential(self.features.export(idx, share), nn.Flatten(1), self.classifier.export(idx, share))
        return fold_batchnorm(module.eval()) if fold_bn else module.eval()
