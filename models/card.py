"""The model card: what the server knows about a checkpoint, typed and validated at load.

Built once from the net and its checkpoint metadata (schema-checked in models/metadata.py), so no
code reads an untyped metadata dict or repeats its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

from policies.widths import match_width

if TYPE_CHECKING:
    from .net import SlimmableNet

__all__ = ["InputSpec", "ModelCard"]

DEFAULT_MEAN_STD = 0.5  # checkpoints that say nothing are normalised to [-1, 1], as digits training does


@dataclass(frozen=True)
class InputSpec:
    """One image input: ``channels`` x ``size`` x ``size``, normalised ``(x / 255 - mean) / std`` per channel."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ModelCard:
    arch: str
    widths: tuple[float, ...]  # ascending
    num_classes: int
    input: InputSpec
    labels: tuple[str, ...] | None = None
    accuracy: Mapping[float, float] = field(default_factory=dict)  # expected top-1 per width, when known
    accuracy_source: str | None = None
    source: str | None = None  # "official" for converted official checkpoints

    @classmethod
    def from_net(cls, net: SlimmableNet, labels: list[str] | None = None) -> "ModelCard":
        """The card of a loaded net (``net.metadata`` from its checkpoint); ``labels`` overrides the checkpoint's."""
        meta = getattr(net, "metadata", None) or {}
        channels = net.in_channels
        accuracy = {float(w): float(a) for w, a in (meta.get("accuracy") or {}).items()}
        labels = labels if labels is not None else meta.get("labels")
        if labels is not None and len(labels) != net.num_classes:
            raise ValueError(f"{len(labels)} labels for {net.num_classes} classes")
        return cls(
            arch=net.arch, widths=tuple(net.widths), num_classes=net.num_classes,
            input=InputSpec(net.input_size, channels,
                            tuple(float(m) for m in meta.get("mean") or (DEFAULT_MEAN_STD,) * channels),
                            tuple(float(s) for s in meta.get("std") or (DEFAULT_MEAN_STD,) * channels)),
            labels=tuple(labels) if labels is not None else None,
            accuracy=MappingProxyType(accuracy),
            accuracy_source=(meta.get("accuracy_source") or "checkpoint metadata") if accuracy else None,
            source=meta.get("source"),
        )

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels is not None and 0 <= index < len(self.labels) else str(index)

    def match_width(self, value: float) -> float | None:
        return match_width(self.widths, value)

    @property
    def accuracy_known(self) -> bool:
        """Every served width has an expected accuracy (the served-accuracy metric needs them all)."""
        return set(self.accuracy) >= set(self.widths)
