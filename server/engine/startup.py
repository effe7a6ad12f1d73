"""Start-up: what must be true of the model before ``/readyz`` turns 200, computed or read from the
start-up cache -- every width exported and warm, MACs and params per width, the latency profile.

Runs in the engine's start-up thread, so ``/healthz`` answers meanwhile. A warm start takes the
exports, the profile and the costs from the cache (:mod:`server.engine.startup_cache`).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from models.card import ModelCard
from policies import LatencyProfile
from server.engine.startup_cache import StartupCache, default_cache_dir
from server.metrics import width_label
from server.runtime import Runtime, profile_runtime
from server.settings import Settings

if TYPE_CHECKING:
    from models import SlimmableNet

__all__ = ["Started", "start_model", "static_costs", "latency_profile", "load_matching_profile", "save_profile"]

log = logging.getLogger("widthwise.engine")


@dataclass(frozen=True)
class Started:
    """The model, ready to serve: its runtime (every width exported and warm), its latency profile,
    MACs and params per width, and the cache they came from (None when it is off)."""

    runtime: Runtime
    profile: LatencyProfile
    costs: dict[float, dict[str, int]]
    cache: StartupCache | None


def start_model(net: "SlimmableNet", card: ModelCard, settings: Settings, runtime_factory: type[Runtime],
                batch_sizes: list[int], name: str) -> Started:
    """Build and measure everything :class:`Started` holds, from the cache where it can."""
    began = time.monotonic()
    cache = StartupCache(settings.cache_dir or default_cache_dir(), net) if settings.startup_cache else None
    costs = static_costs(net, cache)  # a forward per width: not before uvicorn listens
    log.info("start-up: exporting %d widths of %s (%s)%s", len(net.widths), name, net.arch,
             f", cache {cache.directory}" if cache else "")
    runtime = runtime_factory.from_config(net, settings.runtime_config(), batch_sizes,
                                          progress=progress_logger("exported", net.widths, began), cache=cache)
    profile = latency_profile(runtime, net.widths, settings, cache, batch_sizes)
    if settings.save_profile:
        save_profile(settings.save_profile, profile, card)
    return Started(runtime, profile, costs, cache)


def latency_profile(runtime: Runtime, widths: tuple[float, ...], settings: Settings, cache: StartupCache | None,
                    batch_sizes: list[int]) -> LatencyProfile:
    """The ``--profile`` file if given (and measured on this model, device, backend and threads), else
    the cache's, else measured now through the runtime (and cached). Every (width, batch size) is run
    once either way: measuring warms them up, and a profile read from a file must not leave them cold."""
    path = settings.profile
    if path:
        profile = load_matching_profile(path, runtime.fingerprint, settings.profile_ewma_alpha)
        log.info("start-up: latency profile from %s; warming up %d widths", path, len(widths))
        runtime.warm_up(batch_sizes)
        return profile
    cached_name = f"profile-{cache.profile_key(runtime.fingerprint, batch_sizes)}.json" if cache else None
    if cached_name:
        data = cache.load_json(cached_name)
        if data is not None:
            try:
                profile = LatencyProfile.from_dict(data, settings.profile_ewma_alpha)
            except ValueError:
                log.warning("cached latency profile %s is invalid; measuring again", cached_name)
            else:
                log.info("start-up: latency profile from the cache (%s); warming up %d widths", cached_name,
                         len(widths))
                runtime.warm_up(batch_sizes)
                return profile
    log.info("start-up: measuring the latency profile (%d widths x batch sizes %s, %d runs each)",
             len(widths), batch_sizes, settings.profile_repeats)
    profile = profile_runtime(runtime, batch_sizes, settings.profile_repeats,
                              progress=progress_logger("profiled", widths, time.monotonic()))
    profile.ewma_alpha = settings.profile_ewma_alpha
    if cached_name:
        cache.save_json(cached_name, profile.as_dict())
    return profile


def load_matching_profile(path: Path, fingerprint: dict, ewma_alpha: float = 0.1) -> LatencyProfile:
    """The ``--profile`` file, if it was measured for ``fingerprint`` (this model, device, backend,
    precision and threads); ``ValueError`` saying what differs otherwise."""
    profile = LatencyProfile.load(path, ewma_alpha)
    wrong = profile.mismatches(fingerprint)
    if wrong:
        raise ValueError(f"--profile {path} was not measured for this server: {'; '.join(wrong)}. "
                         "Measure one here with `widthwise serve --save-profile PATH` (or `widthwise "
                         "profile --save-profile PATH` with the same flags), or leave --profile out")
    return profile


def save_profile(path: Path, profile: LatencyProfile, card: ModelCard) -> None:
    """``--save-profile``: the profile as measured, with its fingerprint and the expected accuracy (for simulate)."""
    data = profile.as_dict()
    if card.accuracy:
        data["accuracy"] = {str(w): a for w, a in card.accuracy.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # e.g. out/, where the documented commands write
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    log.info("start-up: latency profile written to %s", path)


def static_costs(net: "SlimmableNet", cache: StartupCache | None) -> dict[float, dict[str, int]]:
    """MACs and params per width (a forward each; from the start-up cache when it has them)."""
    name = cache.costs_name() if cache else None
    cached = cache.load_json(name) if name else None
    try:
        if cached is not None:
            return {w: {"macs": int(cached[repr(w)]["macs"]), "params": int(cached[repr(w)]["params"])}
                    for w in net.widths}
    except (KeyError, TypeError, ValueError):
        log.warning("cached MACs/params %s are invalid; counting again", name)
    from models.profiling import count_macs, count_params

    shape = (net.in_channels, net.input_size, net.input_size)
    costs = {}
    for width in net.widths:
        module = net.switch(width)
        costs[width] = {"macs": count_macs(module, shape), "params": count_params(module)}
    if name:
        cache.save_json(name, {repr(w): c for w, c in costs.items()})
    return costs


def progress_logger(what: str, widths: tuple[float, ...], began: float) -> Callable[[float], None]:
    """A ``progress(width)`` callback logging 'width 0.5 exported (2/4, 1.3 s)'."""
    done = itertools.count(1)

    def report(width: float) -> None:
        log.info("start-up: width %s %s (%d/%d, %.1f s)", width_label(width), what, next(done), len(widths),
                 time.monotonic() - began)

    return report
