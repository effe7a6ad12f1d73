"""Slimmable networks: operators, architectures, checkpoints, export and profiling.

The names below load on first use (PEP 562): the server's warm start reads a model card, labels
and widths from this package without importing torch (about a second of start-up), and only a
start that must build the net touches the torch side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and readers; at run time __getattr__ imports on demand
    from .card import ModelCard
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .errors import CheckpointError
    from .labels import imagenet1k_labels, read_labels
    from .net import SlimmableNet
    from .profiling import count_macs, profile_net, shared_param_count
    from .registry import create, list_models, register_model

_WHERE = {
    "CheckpointError": "errors", "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint", "ModelCard": "card",
    "imagenet1k_labels": "labels", "read_labels": "labels",
    "SlimmableNet": "net",
    "count_macs": "profiling", "profile_net": "profiling", "shared_param_count": "profiling",
    "create": "registry", "list_models": "registry", "register_model": "registry",
}

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ModelCard",
    "SlimmableNet",
    "count_macs",
    "create",
    "imagenet1k_labels",
    "list_models",
    "load_checkpoint",
    "profile_net",
    "read_labels",
    "register_model",
    "save_checkpoint",
    "shared_param_count",
]

__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
