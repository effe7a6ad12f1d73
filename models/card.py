"""The model card: what the server knows about a checkpoint, typed and validated at load.

A checkpoint is a net and its card (:class:`~models.checkpoint.Checkpoint`). The card is built once
from the checkpoint's metadata (schema-checked in models/metadata.py) or for a fresh net, and written
back the same way, so no code reads an untyped metadata dict or repeats its defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .widths import match_width

if TYPE_CHECKING:
    from .net import SlimmableNet

__all__ = ["InputSpec", "ModelCard"]

DEFAULT_MEAN_STD = 0.5  # checkpoints that say nothing are normalised to [-1, 1], as digits training does
# Metadata keys the card reads; the net's config (arch, widths, ...) is the net's; anything else passes through.
CARD_KEYS = ("mean", "std", "labels", "accuracy", "accuracy_source", "source")
NET_KEYS = ("arch", "widths", "num_classes", "input_size", "in_channels", "bn_mode", "width_range", "calibrated")


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
    widths: tuple[float, ...]  # ascending, the net's
    num_classes: int
    input: InputSpec
    labels: tuple[str, ...] | None = None
    accuracy: Mapping[float, float] = field(default_factory=dict)  # expected top-1 per width, when known
    accuracy_source: str | None = None
    source: str | None = None  # "official" for converted official checkpoints
    extra: Mapping[str, Any] = field(default_factory=dict)  # other metadata (data set, training): kept when saved

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")

    @classmethod
    def for_net(cls, net: "SlimmableNet", *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                labels: Sequence[str] | None = None, accuracy: Mapping[float, float] | None = None,
                accuracy_source: str | None = None, source: str | None = None,
                extra: Mapping[str, Any] | None = None) -> "ModelCard":
        """The card of ``net`` with what is known of it (defaults: normalised to [-1, 1], no labels, no
        accuracy). ``accuracy_source`` defaults to the checkpoint's metadata when accuracy is given."""
        channels = net.in_channels
        accuracy = {float(w): float(a) for w, a in (accuracy or {}).items()}
        return cls(
            arch=net.arch, widths=tuple(net.widths), num_classes=net.num_classes,
            input=InputSpec(net.input_size, channels,
                            tuple(float(m) for m in mean or (DEFAULT_MEAN_STD,) * channels),
                            tuple(float(s) for s in std or (DEFAULT_MEAN_STD,) * channels)),
            labels=tuple(labels) if labels is not None else None,
            accuracy=MappingProxyType(accuracy),
            accuracy_source=(accuracy_source or "checkpoint metadata") if accuracy else None,
            source=source,
            extra=MappingProxyType(dict(extra or {})),
        )

    @classmethod
    def from_metadata(cls, net: "SlimmableNet", metadata: Mapping[str, Any]) -> "ModelCard":
        """The card a checkpoint's (validated) metadata describes, for the net built from it."""
        extra = {k: v for k, v in metadata.items() if k not in CARD_KEYS and k not in NET_KEYS}
        return cls.for_net(net, mean=metadata.get("mean"), std=metadata.get("std"), labels=metadata.get("labels"),
                           accuracy=metadata.get("accuracy"), accuracy_source=metadata.get("accuracy_source"),
                           source=metadata.get("source"), extra=extra)

    def metadata(self) -> dict[str, Any]:
        """What a checkpoint stores of this card (JSON; the net's own config goes beside it)."""
        meta: dict[str, Any] = {**self.extra, "mean": list(self.input.mean), "std": list(self.input.std)}
        if self.labels is not None:
            meta["labels"] = list(self.labels)
        if self.accuracy:
            meta["accuracy"] = {str(float(w)): float(a) for w, a in self.accuracy.items()}
            meta["accuracy_source"] = self.accuracy_source
        if self.source is not None:
            meta["source"] = self.source
        return meta

    def at_widths(self, widths: Sequence[float]) -> "ModelCard":
        """This card for the same weights serving ``widths``: the accuracy of those widths only."""
        kept = {w: a for w, a in self.accuracy.items() if match_width(widths, w) is not None}
        return dataclasses.replace(self, widths=tuple(widths), accuracy=MappingProxyType(kept),
                                   accuracy_source=self.accuracy_source if kept else None)

    def with_labels(self, labels: Sequence[str]) -> "ModelCard":
        return dataclasses.replace(self, labels=tuple(labels))

    def with_accuracy(self, accuracy: Mapping[float, float], source: str) -> "ModelCard":
        return dataclasses.replace(self, accuracy=MappingProxyType({float(w): float(a) for w, a in accuracy.items()}),
                                   accuracy_source=source)

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels is not None and 0 <= index < len(self.labels) else str(index)

    def match_width(self, value: float) -> float | None:
        return match_width(self.widths, value)

    @property
    def accuracy_known(self) -> bool:
        """Every served width has an expected accuracy (the served-accuracy metric needs them all)."""
        return set(self.accuracy) >= set(self.widths)
