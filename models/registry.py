"""Name -> constructor registry of slimmable architectures.

Tests parametrize over ``list_models()``, so an architecture is tested the
moment it is registered.
"""

from __future__ import annotations

import importlib
from typing import Callable

from .net import SlimmableNet

__all__ = ["register_model", "create", "list_models"]

_MODELS: dict[str, Callable[..., SlimmableNet]] = {}
# The modules whose import registers the built-in architectures (models/__init__ loads lazily).
BUILTIN_MODULES = ("convnet", "mobilenet", "resnet", "shufflenet", "us_mobilenet")


def _register_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def register_model(fn: Callable[..., SlimmableNet]) -> Callable[..., SlimmableNet]:
    """Decorator: register ``fn`` under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    _register_builtin()
    return sorted(_MODELS)


def create(arch: str, **kwargs) -> SlimmableNet:
    """Build a registered architecture.

    Args:
        arch: registered name, e.g. ``"s_mobilenet_v2"``.
        **kwargs: ``num_classes``, ``input_size``, ``widths``, ``bn_mode``.

    Returns:
        The network in eval mode.
    """
    _register_builtin()
    try:
        fn = _MODELS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(list_models())}") from None
    return fn(**kwargs).eval()
