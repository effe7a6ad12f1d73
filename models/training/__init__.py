"""Slimmable training (the paper's Algorithm 1), evaluation and BN calibration.

Loaded on first use (see models/__init__): ``widthwise``'s argument parser imports the training
sub-commands' definitions, which must not cost a torch import on every ``serve``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .data import Dataset, load_dataset
    from .trainer import TrainConfig, calibrate_bn, evaluate, train

_WHERE = {"Dataset": "data", "load_dataset": "data",
          "TrainConfig": "trainer", "calibrate_bn": "trainer", "evaluate": "trainer", "train": "trainer"}

__all__ = ["Dataset", "TrainConfig", "calibrate_bn", "evaluate", "load_dataset", "train"]

__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
