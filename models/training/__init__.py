"""Slimmable training (the paper's Algorithm 1), evaluation and BN calibration."""

from .data import Dataset, load_dataset
from .trainer import TrainConfig, calibrate_bn, evaluate, train

__all__ = ["Dataset", "TrainConfig", "calibrate_bn", "evaluate", "load_dataset", "train"]
