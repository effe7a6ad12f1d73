"""The same weights at other widths: narrowing a net to the widths it serves, or giving a universally
slimmable net BN slots for a new grid. Each is a net of the same architecture built anew (through the
registry) holding this net's tensors."""

from __future__ import annotations

from typing import Callable, Sequence

from .net import SlimmableNet
from .registry import create
from .universal import UniversalNet
from .widths import match_width

__all__ = ["select_widths", "with_widths"]


def with_widths(net: SlimmableNet, widths: Sequence[float]) -> SlimmableNet:
    """``net``'s weights serving ``widths``.

    A slimmable net: ``widths`` are declared ones, and switch ``i`` of the result is switch
    ``widths[i]`` of ``net`` -- its leading weight slices and its own BN. A universally slimmable net:
    BN slots for exactly ``widths`` (each in its range); existing slots keep their statistics and
    calibration, new ones start fresh (uncalibrated), to calibrate or serve a grid other than the
    checkpoint's.
    """
    if isinstance(net, UniversalNet):
        widths = tuple(sorted({round(float(w), 6) for w in widths}))
        kept = tuple(w for w in net.calibrated if match_width(widths, w) is not None)
        return _rebuilt(net, widths, lambda i: net.slot_of(widths[i]), calibrated=kept)
    slots = [net.width_index(w) for w in widths]
    return _rebuilt(net, tuple(net.widths[i] for i in slots), lambda i: slots[i])


def select_widths(net, widths: Sequence[float] | None):
    """The net to serve: ``net`` at ``widths`` (each declared; for a universally slimmable net each
    calibrated), or at all its widths -- a universally slimmable net's calibrated ones.

    Raises:
        ValueError: naming the widths that cannot be served and what to do.
    """
    from .rebuild import with_widths
    from .universal import UniversalNet

    universal = isinstance(net, UniversalNet)
    available = net.calibrated if universal else net.widths
    if widths is None:
        if universal and not available:
            raise ValueError(f"{net.arch}: no width has calibrated BN statistics; run `widthwise calibrate "
                             f"--widths {net.width_range[0]:g}:{net.width_range[1]:g}:0.05` first")
        return with_widths(net, available) if universal and available != net.widths else net
    missing = [w for w in widths if match_width(available, w) is None]
    if missing:
        what = "calibrated" if universal else "declared"
        hint = ("; calibrate them with `widthwise calibrate --widths ...`" if universal else "")
        raise ValueError(f"--widths: {', '.join(f'{w:g}' for w in missing)} not {what} by the checkpoint "
                         f"({what}: {', '.join(f'{a:g}' for a in available) or 'none'}){hint}")
    chosen = tuple(match_width(available, w) for w in widths)
    return net if chosen == net.widths else with_widths(net, chosen)


def _rebuilt(net: SlimmableNet, widths: tuple[float, ...], old_slot: Callable[[int], int | None],
             **config) -> SlimmableNet:
    """A net of ``net``'s architecture at ``widths`` (constructor ``config`` overrides) holding its
    weights: BN slot ``i`` comes from ``net``'s slot ``old_slot(i)`` (None: left as initialised), every
    other tensor is the leading block of ``net``'s (the widest may now be narrower)."""
    new = create(net.arch, **{**{k: v for k, v in net.config().items() if k != "arch"}, "widths": widths, **config})
    state = net.state_dict()
    mapped = {}
    for key, value in new.state_dict().items():
        source = slot_key(key, old_slot)
        if source is None:
            mapped[key] = value
        else:
            mapped[key] = state[source][tuple(slice(0, n) for n in value.shape)] if value.dim() else state[source]
    new.load_state_dict(mapped, strict=True)
    new.train(net.training)
    return new


def slot_key(key: str, old_slot: Callable[[int], int | None]) -> str | None:
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
