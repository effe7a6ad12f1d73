"""The served net as the start-up cache describes it, its weights loaded only if something needs them.

On a warm start every exported switch, the latency profile and MACs per width come from the start-up
cache; what the server still wants from the net is its shape (arch, widths, input, classes) and the
checkpoint's model card. :func:`served_checkpoint` keeps those in the cache too, keyed by the
checkpoint file's SHA-256 and the served widths, and returns a :class:`CachedNet` that answers them.
Building the real net (importing torch, reading the weights: ~1.2 s of a 2.8 s warm start of
S-MobileNet v2 224) happens only when a caller asks for anything else (an export the cache misses,
the torch backend), transparently.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from models.card import ModelCard
from server.engine.startup_cache import FORMAT, CacheDirectory, _key, file_digest, model_digest

if TYPE_CHECKING:
    from models import Checkpoint, SlimmableNet

__all__ = ["CachedNet", "served_checkpoint"]

log = logging.getLogger("widthwise.cache")

SHAPE_FIELDS = ("arch", "in_channels", "input_size", "num_classes")


class CachedNet:
    """A net's shape from the cache; any other attribute loads the real net first."""

    def __init__(self, description: dict, load: Callable[[], "SlimmableNet"]) -> None:
        self.arch: str = description["arch"]
        self.widths: tuple[float, ...] = tuple(float(w) for w in description["widths"])
        self.in_channels: int = int(description["in_channels"])
        self.input_size: int = int(description["input_size"])
        self.num_classes: int = int(description["num_classes"])
        self.cached_digest: str = description["digest"]  # the StartupCache key of the weights
        self._load = load
        self._net: "SlimmableNet | None" = None
        self._lock = threading.Lock()

    def real(self) -> "SlimmableNet":
        """The net itself, built from the checkpoint on first use."""
        with self._lock:
            if self._net is None:
                log.info("start-up: loading the checkpoint's weights (not everything came from the cache)")
                self._net = self._load()
            return self._net

    def __getattr__(self, name: str) -> Any:  # only for names not set in __init__
        if name.startswith("__") or name in ("_net", "_load", "_lock"):
            raise AttributeError(name)
        return getattr(self.real(), name)


def describe(checkpoint: "Checkpoint", digest: str) -> dict:
    net = checkpoint.net
    return {**{f: getattr(net, f) for f in SHAPE_FIELDS}, "widths": [float(w) for w in net.widths],
            "card": checkpoint.card.metadata(), "digest": digest}


def _valid(description: Any) -> bool:
    try:
        return (isinstance(description["arch"], str) and isinstance(description["digest"], str)
                and isinstance(description["card"], dict) and len(description["widths"]) > 0
                and all(int(description[f]) > 0 for f in SHAPE_FIELDS[1:])
                and all(float(w) > 0 for w in description["widths"]))
    except (KeyError, TypeError, ValueError):
        return False


def served_checkpoint(path: Path, widths: Sequence[float] | None,
                      cache_dir: Path | None) -> "tuple[SlimmableNet | CachedNet, ModelCard]":
    """The net ``serve`` runs and its card: the checkpoint at ``path`` serving ``widths``
    (:meth:`~models.checkpoint.Checkpoint.select`); with a cache directory, a :class:`CachedNet` and the
    cached card when an earlier start described this very file and these widths."""

    def load_checkpoint() -> "Checkpoint":
        from models.checkpoint import load_checkpoint

        return load_checkpoint(path).select(widths)

    if cache_dir is None or not path.is_file():  # a missing file: load_checkpoint says what is wrong
        loaded = load_checkpoint()
        return loaded.net, loaded.card
    cache = CacheDirectory(cache_dir, warn_unwritable=False)  # the engine's StartupCache says it
    served = None if widths is None else [float(w) for w in widths]
    name = f"net-{_key(FORMAT, 'net and card', file_digest(path), served)}.json"
    description = cache.load_json(name)
    if description is not None and _valid(description):
        net = CachedNet(description, lambda: load_checkpoint().net)
        try:
            return net, ModelCard.from_metadata(net, description["card"])
        except (TypeError, ValueError):
            pass
    if description is not None:
        log.warning("cache entry %s is invalid; loading the checkpoint", cache.directory / name)
    loaded = load_checkpoint()
    loaded.net.cached_digest = model_digest(loaded.net)  # the engine's StartupCache keys by it: hash the weights once
    try:
        cache.save_json(name, describe(loaded, loaded.net.cached_digest))
    except (TypeError, ValueError) as exc:  # a card that JSON cannot hold: the next start loads the net too
        log.info("start-up cache: %s cannot be described (%s); later starts load it", path, exc)
    return loaded.net, loaded.card
