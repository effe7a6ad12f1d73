"""Matching a requested width against a model's declared widths (pure, no torch)."""

from __future__ import annotations

from typing import Sequence

__all__ = ["match_width"]

TOLERANCE = 1e-9  # widths arrive as floats parsed from headers, JSON and flags: 0.35 must match 0.35


def match_width(widths: Sequence[float], value: float) -> float | None:
    """The declared width equal to ``value`` (within float tolerance), or None."""
    for width in widths:
        if abs(width - value) < TOLERANCE:
            return width
    return None
