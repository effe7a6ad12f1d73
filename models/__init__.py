"""Slimmable networks: operators, architectures, checkpoints, export and profiling."""

from . import convnet, mobilenet, resnet, shufflenet, us_mobilenet  # noqa: F401  (register the architectures)
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .labels import imagenet1k_labels, read_labels
from .net import SlimmableNet
from .profiling import count_macs, profile_net, shared_param_count
from .registry import create, list_models, register_model

__all__ = [
    "CheckpointError",
    "SlimmableNet",
    "count_macs",
    "create",
    "list_models",
    "imagenet1k_labels",
    "load_checkpoint",
    "profile_net",
    "read_labels",
    "register_model",
    "save_checkpoint",
    "shared_param_count",
]
