"""Residual / plain blocks shared by the architectures, and their exported twins."""

from __future__ import annotations

import torch
from torch import nn

from .slimmable import SlimSequential

__all__ = ["SlimBlock", "PlainBlock"]


class PlainBlock(nn.Module):
    """The exported form of :class:`SlimBlock` for one switch (plain torch modules only)."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None, residual: bool, post_relu: bool) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.residual = residual
        self.post_relu = post_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.residual:
            out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return torch.relu(out) if self.post_relu else out


class SlimBlock(nn.Module):
    """``body(x)`` plus an optional identity or projection shortcut, optionally followed by ReLU.

    Attribute names (``body``, ``shortcut``) match the official checkpoints.
    """

    def __init__(
        self,
        body: SlimSequential,
        shortcut: SlimSequential | None = None,
        residual: bool = False,
        post_relu: bool = False,
    ) -> None:
        super().__init__()
        self.body = body
        if shortcut is not None:
            self.shortcut = shortcut
        else:
            self.shortcut = None
        self.residual = residual or shortcut is not None
        self.post_relu = post_relu

    def forward(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        out = self.body(x, idx)
        if self.residual:
            out = out + (self.shortcut(x, idx) if self.shortcut is not None else x)
        return torch.relu(out) if self.post_relu else out

    def export(self, idx: int, share: bool = False) -> PlainBlock:
        shortcut = self.shortcut.export(idx, share) if self.shortcut is not None else None
        return PlainBlock(self.body.export(idx, share), shortcut, self.residual, self.post_relu)
