"""The ONNX Runtime backend (the CPU default): each width exported to ONNX and run by its own session,
every session sharing one thread pool, one memory arena and the initializers that widths have in common."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnxruntime as ort

from server.runtime import cpus
from server.runtime.cpu_features import nchwc_block

if TYPE_CHECKING:
    from models import SlimmableNet

__all__ = ["OnnxRuntimeExecutor", "build_executors", "default_ort_threads", "find_shared_initializers",
           "ort_session_options", "pool_threads", "shared_initializers", "use_global_thread_pool"]

log = logging.getLogger("widthwise.runtime")

_GLOBAL_POOL_THREADS: int | None = None


def use_global_thread_pool(threads: int) -> int:
    """Make every ONNX Runtime session in this process share one intra-op thread pool and one
    CPU memory arena.

    With a pool per session, the threads of the width that ran last keep
    spinning while the next width runs, and the two fight over the cores (on
    2 cores this made switching widths 2-3x slower). With an arena per session,
    each width keeps the peak activation memory of its largest batch for good:
    a 14-width US-MobileNet v2 grid held 1.05 GB after one batch of 8 per width,
    0.21 GB with one arena (one worker runs one batch at a time, so one arena's
    peak is the largest single batch's). ORT fixes the pool size at the first
    session of the process; later calls return that size.
    """
    global _GLOBAL_POOL_THREADS
    if _GLOBAL_POOL_THREADS is None:
        ort.set_global_thread_pool_sizes(threads, 1)
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, None)
        _GLOBAL_POOL_THREADS = threads
    return _GLOBAL_POOL_THREADS


def pool_threads(requested: int | None) -> int:
    """The pool size sessions of this process run with: the first session's, else what a runtime
    asking for ``requested`` (None: the default) would get."""
    return _GLOBAL_POOL_THREADS or requested or default_ort_threads()


def default_ort_threads() -> int:
    """All usable cores but one: ORT's pool threads spin after each batch, and the event loop
    needs a core to parse requests meanwhile (on 2 cores, 2 pool threads doubled the
    HTTP overhead without making batch-1 inference faster inside the server). Usable means
    the affinity mask and the container's CPU quota, not the host's core count."""
    return max(1, cpus.usable_cpus() - 1)


def ort_session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.use_per_session_threads = False  # the process-wide pool (use_global_thread_pool)
    options.add_session_config_entry("session.use_env_allocators", "1")  # and its arena
    options.log_severity_level = 3
    return options


class OnnxRuntimeExecutor:
    """One ONNX Runtime session per switch; initializers identical across switches are stored once."""

    def __init__(self, model: bytes, shared: dict[str, object]) -> None:
        options = ort_session_options()
        for name, value in shared.items():
            options.add_initializer(name, value)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def build_executors(
    net: SlimmableNet, threads: int | None, channel_padding: bool, progress: Callable[[float], None] | None, cache
) -> tuple[dict[float, OnnxRuntimeExecutor], list, int]:
    """A session per width of ``net`` (exported, or from the start-up ``cache``), the arrays the
    sessions share (they must outlive them) and the pool's thread count."""
    threads = use_global_thread_pool(threads or default_ort_threads())
    block = nchwc_block() if channel_padding else None
    models = {}
    for width in net.widths:
        models[width] = _cached_export(net, width, block, cache)
        if progress is not None:
            progress(width)
    shared, keep_alive = _cached_shared_initializers(models, block, cache)
    return {w: OnnxRuntimeExecutor(models[w], shared[w]) for w in net.widths}, keep_alive, threads


def find_shared_initializers(
    models_by_width: dict[float, bytes],
) -> tuple[list[np.ndarray], dict[float, dict[str, int]]]:
    """Initializers whose values are identical in several switches (e.g. S-MobileNet v2's shared
    classifier): their arrays, and per switch {initializer name: index into the arrays}. Imports the
    ``onnx`` package, which a warm start (everything from the cache) never needs."""
    import onnx
    from onnx import numpy_helper

    seen: dict[str, list[tuple[float, str, np.ndarray]]] = {}
    for width, model in models_by_width.items():
        for init in onnx.load_from_string(model).graph.initializer:
            array = numpy_helper.to_array(init)
            key = hashlib.sha1(array.tobytes() + str(array.shape).encode() + str(array.dtype).encode()).hexdigest()
            seen.setdefault(key, []).append((width, init.name, array))
    arrays: list[np.ndarray] = []
    uses: dict[float, dict[str, int]] = {w: {} for w in models_by_width}
    for entries in seen.values():
        if len({w for w, _, _ in entries}) < 2:
            continue
        arrays.append(np.ascontiguousarray(entries[0][2]))
        for width, name, _ in entries:
            uses[width][name] = len(arrays) - 1
    return arrays, uses


def shared_initializers(models_by_width: dict[float, bytes]) -> tuple[dict[float, dict[str, object]], list]:
    """The shared initializers (:func:`find_shared_initializers`) as one OrtValue each; returns per-switch
    {name: OrtValue} and the arrays that must outlive the sessions."""
    return _ort_values(*find_shared_initializers(models_by_width))


def _ort_values(
    arrays: list[np.ndarray], uses: dict[float, dict[str, int]]
) -> tuple[dict[float, dict[str, object]], list]:
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    per_width = {width: {name: values[i] for name, i in names.items()} for width, names in uses.items()}
    return per_width, [*arrays, *values]


def _cached_shared_initializers(models_by_width: dict[float, bytes], block: int | None, cache) -> tuple[dict, list]:
    """:func:`shared_initializers`, from the start-up cache when it has them: finding them parses every
    switch with the ``onnx`` package (~0.3 s of a warm start)."""
    if cache is None:
        return shared_initializers(models_by_width)
    widths = tuple(models_by_width)
    name = cache.shared_name(cache.export_key(block), widths)
    stored = cache.load_arrays(name)
    if stored is not None and "uses" in stored:
        try:
            uses = {float(w): {str(n): int(i) for n, i in names.items()}
                    for w, names in json.loads(bytes(stored["uses"]).decode()).items()}
            arrays = [stored[f"a{i}"] for i in range(len(stored) - 1)]
            in_range = all(0 <= i < len(arrays) for names in uses.values() for i in names.values())
            if set(uses) == set(widths) and in_range:
                return _ort_values(arrays, uses)
        except (KeyError, ValueError, TypeError, AttributeError):
            pass
        log.warning("cache entry %s is invalid; finding shared initializers again", name)
    arrays, uses = find_shared_initializers(models_by_width)
    encoded = json.dumps({repr(w): names for w, names in uses.items()}).encode()
    cache.save_arrays(name, {"uses": np.frombuffer(encoded, np.uint8), **{f"a{i}": a for i, a in enumerate(arrays)}})
    return _ort_values(arrays, uses)


def _cached_export(net: SlimmableNet, width: float, block: int | None, cache) -> bytes:
    """Switch ``width`` as ONNX from the start-up cache when it holds an intact entry, else exported
    (and stored). The exporter (torch) is imported only when something must be exported: a warm start
    from the cache never loads torch."""
    if cache is not None:
        key = cache.export_key(block)
        model = cache.load_export(key, width)  # None when missing or corrupt (it says which)
        if model is not None:
            return model
    from server.runtime.onnx_export import export_switch_onnx

    model = export_switch_onnx(net, width, block)
    if cache is not None:
        cache.save_export(key, width, model)
    return model
