"""The base class of every slimmable network: width lookup, forward stages, export."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from policies.widths import match_width

from .fold import fold_batchnorm
from .slimmable import SharedBatchNorm2d, SwitchableBatchNorm2d

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

    def with_widths(self, widths: Sequence[float]) -> "SlimmableNet":
        """The same weights serving only ``widths`` (declared ones): switch ``i`` of the result is
        switch ``widths[i]`` of this net -- its leading weight slices and its own BN."""
        slots = [self.width_index(w) for w in widths]
        return self._rebuilt(tuple(self.widths[i] for i in slots), lambda i: slots[i])

    def _rebuilt(self, widths: tuple[float, ...], old_slot, **config) -> "SlimmableNet":
        """A net of this architecture at ``widths`` (constructor ``config`` overrides) holding this net's
        weights: BN slot ``i`` comes from this net's slot ``old_slot(i)`` (None: left as initialised),
        every other tensor is the leading block of this net's (the widest may now be narrower)."""
        from .registry import create

        new = create(self.arch, **{**{k: v for k, v in self.config().items() if k != "arch"}, "widths": widths,
                                   **config})
        state = self.state_dict()
        mapped = {}
        for key, value in new.state_dict().items():
            source = slot_key(key, old_slot)
            if source is None:
                mapped[key] = value
            else:
                mapped[key] = state[source][tuple(slice(0, n) for n in value.shape)] if value.dim() else state[source]
        new.load_state_dict(mapped, strict=True)
        new.train(self.training)
        new.metadata = narrowed_metadata(getattr(self, "metadata", {}), new)
        return new

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


def slot_key(key: str, old_slot) -> str | None:
    """``features.1.bn.3.running_mean`` -> the same key at slot ``old_slot(3)`` (None if that returns
    None); keys without a ``bn.<i>`` slot map to themselves."""
    parts = key.split(".")
    for i in range(len(parts) - 2, 0, -1):
        if parts[i - 1] == "bn" and parts[i].isdigit():
            old = old_slot(int(parts[i]))
            if old is None:
                return None
            return ".".join(parts[:i] + [str(old)] + parts[i + 1:])
    return key


def narrowed_metadata(metadata: dict, net: "SlimmableNet") -> dict:
    """``metadata`` for ``net`` after ``with_widths``: its config, and accuracy of the kept widths only."""
    meta = {**metadata, **net.config()}
    if isinstance(meta.get("accuracy"), dict):
        meta["accuracy"] = {w: a for w, a in meta["accuracy"].items() if any(abs(float(w) - k) < 1e-6 for k in net.widths)}
    return meta
