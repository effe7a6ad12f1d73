"""Class labels: reading a labels file, and the ImageNet-1k names shipped with the package."""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["read_labels", "imagenet1k_labels", "check_label_count"]

IMAGENET1K_LABELS = Path(__file__).resolve().parent / "data" / "imagenet1k_labels.txt"


def read_labels(path: str | Path) -> list[str]:
    """One label per line, in class-index order; trailing blank lines are ignored.

    Raises:
        ValueError: unreadable file, or a blank label between others.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"labels file {path}: cannot be read ({exc})") from None
    labels = [line.strip() for line in text.rstrip("\n").split("\n")] if text.strip() else []
    if not labels:
        raise ValueError(f"labels file {path} is empty; it needs one label per line")
    blank = [i + 1 for i, label in enumerate(labels) if not label]
    if blank:
        raise ValueError(f"labels file {path}: line {blank[0]} is blank; every class needs a label")
    return labels


def check_label_count(labels: list[str], num_classes: int, source: str) -> None:
    if len(labels) != num_classes:
        raise ValueError(f"{source} has {len(labels)} labels but the model has {num_classes} classes")


@functools.lru_cache(maxsize=1)
def imagenet1k_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in index order (see models/data/README.md)."""
    return tuple(read_labels(IMAGENET1K_LABELS))
