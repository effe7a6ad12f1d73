"""Widths: matching a requested width against declared ones, and lists and grids as users write them
(pure; no torch)."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["WIDTH_TOLERANCE", "match_width", "parse_widths", "width_grid"]

# Widths arrive as floats parsed from headers, JSON and flags (0.35 must match 0.35) and grids are rounded
# to 6 decimals, so two widths closer than this are the same width.
WIDTH_TOLERANCE = 1e-6


def match_width(widths: Sequence[float], value: float) -> float | None:
    """The one of ``widths`` equal to ``value`` within :data:`WIDTH_TOLERANCE`, or None."""
    for width in widths:
        if abs(width - value) < WIDTH_TOLERANCE:
            return width
    return None


def width_grid(low: float, high: float, step: float) -> tuple[float, ...]:
    """``low, low + step, ..., high`` rounded to 6 decimals (``0.35:1.0:0.05`` -> 14 widths)."""
    if not (0 < low <= high) or step <= 0:
        raise ValueError(f"a width grid needs 0 < low <= high and step > 0, got {low:g}:{high:g}:{step:g}")
    steps = (high - low) / step
    if steps > 256:  # also an infinite count from a step like 1e-320
        raise ValueError(f"{low:g}:{high:g}:{step:g} has more than 256 widths; at most 256")
    count = math.floor(steps + 1e-9) + 1  # (a hair above: 0.35:1.0:0.05 is 12.999999999999998 steps)
    if count > 256:
        raise ValueError(f"{low:g}:{high:g}:{step:g} has {count} widths; at most 256")
    grid = [round(low + i * step, 6) for i in range(count)]
    if match_width((high,), grid[-1]) is None:
        raise ValueError(f"{low:g}:{high:g}:{step:g} does not end at {high:g} (last width {grid[-1]:g})")
    return tuple(grid)


def parse_widths(text: str) -> tuple[float, ...]:
    """``"0.25,0.5,1"`` -> ``(0.25, 0.5, 1.0)``; ``"0.35:1.0:0.05"`` -> the grid 0.35, 0.4, ..., 1.0.

    Raises:
        ValueError: saying what is wrong (not numbers, not ascending, out of (0, 4]).
    """
    parts = text.split(":") if ":" in text else text.split(",")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"widths are a comma-separated list or lo:hi:step, got {text!r}") from None
    if any(not math.isfinite(n) for n in numbers):
        raise ValueError(f"widths must be finite numbers, got {text!r}")
    if ":" in text:
        if len(numbers) != 3:
            raise ValueError(f"a width grid is lo:hi:step, got {text!r}")
        widths = width_grid(*numbers)
    else:
        widths = tuple(numbers)
    if any(not 0 < w <= 4 for w in widths):
        raise ValueError(f"every width must be in (0, 4], got {text!r}")
    if list(widths) != sorted(set(widths)):
        raise ValueError(f"widths must be strictly ascending, got {text!r}")
    return widths
