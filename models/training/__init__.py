"""Slimmable training (the paper's Algorithm 1), evaluation and BN calibration.

Loaded on first use (see models/__init__): ``widthwise``'s argument parser imports the training
sub-commands' definitions, which must not cost a torch import on every ``serve``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .data import Dataset, load_dataset
    from .trainer import TrainConfig, calibrate_bn, evaluate, train

_WHERE = {"Dataset": "data", "load_dataset": "data",
          "TrainConfig": "trainer", "calibrate_bn": "trainer", "evaluate": "trainer", "train": "trainer"}

__all__ = ["Dataset", "TrainConfig", "calibrate_bn", "evaluate", "load_dataset", "train"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:  # a submodule (``models.checkpoint.OFFICIAL_TOP1`` after ``import models``)
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
