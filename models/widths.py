"""Width lists and grids as users write them, and choosing which of a model's widths to serve."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["parse_widths", "width_grid", "select_widths"]


def width_grid(low: float, high: float, step: float) -> tuple[float, ...]:
    """``low, low + step, ..., high`` rounded to 6 decimals (``0.35:1.0:0.05`` -> 14 widths)."""
    if not (0 < low <= high) or step <= 0:
        raise ValueError(f"a width grid needs 0 < low <= high and step > 0, got {low:g}:{high:g}:{step:g}")
    count = math.floor((high - low) / step + 1e-9) + 1
    if count > 256:
        raise ValueError(f"{low:g}:{high:g}:{step:g} has {count} widths; at most 256")
    grid = [round(low + i * step, 6) for i in range(count)]
    if not math.isclose(grid[-1], high, abs_tol=1e-6):
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


def select_widths(net, widths: Sequence[float] | None):
    """The net to serve: ``net`` at ``widths`` (each declared; for a universally slimmable net each
    calibrated), or at all its widths -- a universally slimmable net's calibrated ones.

    Raises:
        ValueError: naming the widths that cannot be served and what to do.
    """
    from .universal import UniversalNet

    universal = isinstance(net, UniversalNet)
    available = net.calibrated if universal else net.widths
    if widths is None:
        if universal and not available:
            raise ValueError(f"{net.arch}: no width has calibrated BN statistics; run `widthwise calibrate "
                             f"--widths {net.width_range[0]:g}:{net.width_range[1]:g}:0.05` first")
        return net.with_widths(available) if universal and available != net.widths else net
    missing = [w for w in widths if not any(math.isclose(w, a, abs_tol=1e-6) for a in available)]
    if missing:
        what = "calibrated" if universal else "declared"
        hint = ("; calibrate them with `widthwise calibrate --widths ...`" if universal else "")
        raise ValueError(f"--widths: {', '.join(f'{w:g}' for w in missing)} not {what} by the checkpoint "
                         f"({what}: {', '.join(f'{a:g}' for a in available) or 'none'}){hint}")
    chosen = tuple(next(a for a in available if math.isclose(w, a, abs_tol=1e-6)) for w in widths)
    return net if chosen == net.widths else net.with_widths(chosen)
