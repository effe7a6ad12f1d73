"""Runtime: executes one batch at one width with that switch's exported module.

Each width is exported once at load time (BN folded, eval mode) and wrapped in an executor of the
chosen backend (:mod:`~server.runtime.ort`, :mod:`~server.runtime.torch_cpu`,
:mod:`~server.runtime.torch_cuda`), imported only when chosen: the ONNX Runtime path (the CPU
default) never needs torch, so a warm start from the start-up cache serves without importing it
(~1 s of start-up). Batches cross the runtime's boundary as numpy arrays.

Executing a batch touches no state shared between widths, so concurrent widths need no lock; one
worker thread drives the runtime.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from server.runtime.config import RuntimeConfig
from server.runtime.devices import Device, resolve_backend, resolve_device

if TYPE_CHECKING:
    from models import SlimmableNet
    from policies import LatencyProfile

__all__ = ["EXECUTION_REVISION", "Device", "Runtime", "profile_runtime", "resolve_backend", "resolve_device",
           "return_freed_heap", "runtime_fingerprint"]

log = logging.getLogger("widthwise.runtime")

# Bump when a change to how widths execute changes their speed: latency profiles cached by earlier code
# (server.engine.startup_cache) are then measured again instead of planning with the old speeds.
# 2: shared weights fold BN at each call; the torch CPU executor runs channels_last.
EXECUTION_REVISION = 2


class Executor(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class Runtime:
    """Per-switch executors of one model on one device."""

    def __init__(
        self,
        net: "SlimmableNet",
        device: str = "auto",
        backend: str = "auto",
        threads: int | None = None,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        batch_buckets: list[int] | None = None,
        channel_padding: bool = True,
        progress: Callable[[float], None] | None = None,
        cache=None,
        weights: str = "per-width",
    ) -> None:
        """``progress(width)`` is called as each width's executor is ready (start-up progress lines);
        ``cache`` (a :class:`~server.engine.startup_cache.StartupCache`) keeps exported switches between
        starts; ``weights``: ``per-width`` (each width a BN-folded copy) or ``shared`` (every width reads
        the net's one copy: :meth:`~models.net.SlimmableNet.at_width`)."""
        if weights not in ("per-width", "shared"):
            raise ValueError(f"weights must be per-width or shared, not {weights!r}")
        self.device = resolve_device(device)
        self.backend = resolve_backend(backend, self.device, weights)
        self.weights = weights
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"precision {precision} needs CUDA; use fp32 on CPU")
        self.widths = net.widths
        self.input_shape = (net.in_channels, net.input_size, net.input_size)
        self.num_classes = net.num_classes
        self.precision = precision
        self._executors: dict[float, Executor] = {}
        self._keep_alive: list = []
        if self.backend == "onnxruntime":
            from server.runtime.ort import build_executors

            self._executors, self._keep_alive, self.threads = build_executors(
                net, threads, channel_padding, progress, cache)
        else:
            self._build_torch(net, threads, cuda_graphs and weights != "shared", batch_buckets or [1], progress)
        self.fingerprint = runtime_fingerprint(net, device, backend, self.threads, precision, weights)
        log.info("runtime: %s backend on %s (%s)", self.backend, self.device, precision)

    def _build_torch(self, net: "SlimmableNet", threads: int | None, cuda_graphs: bool, buckets: list[int],
                     progress: Callable[[float], None] | None) -> None:
        """Each width's module on the torch backend. No CUDA graphs on shared weights: each captured
        graph's private memory pool would keep the weights folded at each call alive, the copies
        sharing exists to avoid."""
        import torch

        from server.runtime.torch_cpu import TorchCpuExecutor, default_torch_threads

        torch.set_num_threads(threads or default_torch_threads())
        self.threads = torch.get_num_threads()
        for width in net.widths:
            module = net.at_width(width) if self.weights == "shared" else net.switch(width, fold_bn=True)
            if self.device.type == "cuda":
                from server.runtime.torch_cuda import TorchCudaExecutor

                self._executors[width] = TorchCudaExecutor(module, self.input_shape, self.device, self.precision,
                                                           cuda_graphs, buckets)
            else:
                self._executors[width] = TorchCpuExecutor(module, net.input_size)
            if progress is not None:
                progress(width)

    @classmethod
    def from_config(cls, net: "SlimmableNet", config: RuntimeConfig, batch_buckets: list[int] | None = None,
                    progress: Callable[[float], None] | None = None, cache=None) -> "Runtime":
        """The runtime ``config`` describes (``Settings.runtime_config()``)."""
        return cls(net, config.device, config.backend, config.threads, config.precision, config.cuda_graphs,
                   batch_buckets, progress=progress, cache=cache, weights=config.weights)

    def run(self, width: float, batch: np.ndarray) -> np.ndarray:
        """Logits ``[N, classes]`` (float32) for ``batch`` (``[N, C, H, W]`` float32) at ``width``."""
        return self._executors[width](batch)

    def warm_up(self, batch_sizes, repeats: int = 1) -> None:
        """Run every (width, batch size) ``repeats`` times: the first run of a shape is the slow one (its
        buffers are allocated then). A second round added ~0.35 s to a warm restart of S-MobileNet v2
        224 (4 widths x batch sizes 1-8) and no measurable first-request latency."""
        for width in self.widths:
            for b in batch_sizes:
                for _ in range(repeats):
                    self.run(width, np.zeros((b, *self.input_shape), np.float32))


def runtime_fingerprint(
    net: "SlimmableNet", device: str = "auto", backend: str = "auto", threads: int | None = None,
    precision: str = "fp32", weights: str = "per-width",
) -> dict:
    """What a latency profile measures: this model on this device, backend, precision and thread count,
    as a :class:`Runtime` built with the same arguments in this process would run it.

    A profile taken under any other fingerprint predicts the wrong latencies (a 224px
    S-MobileNet v2 profile loaded into the 32px digits server was 10x off).
    """
    resolved = resolve_device(device)
    backend = resolve_backend(backend, resolved, weights)
    if backend == "onnxruntime":  # one pool per process, sized by its first session
        from server.runtime.ort import pool_threads

        threads = pool_threads(threads)
    else:
        from server.runtime.torch_cpu import default_torch_threads

        threads = threads or default_torch_threads()
    return {
        "arch": net.arch,
        "widths": [float(w) for w in net.widths],
        "input_size": net.input_size,
        "in_channels": net.in_channels,
        "device": str(resolved),
        "backend": backend,
        "precision": precision,
        "threads": threads,
        # only when shared: a per-width profile (the default) keeps the fingerprint it always had
        **({"weights": weights} if weights != "per-width" else {}),
    }


def profile_runtime(runtime: Runtime, batch_sizes, repeats: int = 15,
                    progress: Callable[[float], None] | None = None) -> "LatencyProfile":
    """Latency profile of every (width, batch size) as the runtime executes it, with the runtime's
    fingerprint; ``progress(width)`` is called as each width is done."""
    from policies import measure_profile

    examples = {}

    def run(width: float, batch: int) -> None:
        if batch not in examples:
            examples[batch] = np.zeros((batch, *runtime.input_shape), np.float32)
        runtime.run(width, examples[batch])

    profile = measure_profile(run, runtime.widths, batch_sizes, repeats=repeats, progress=progress)
    profile.fingerprint = dict(runtime.fingerprint)
    return profile


def return_freed_heap() -> None:
    """Give the heap freed by start-up (exported ONNX bytes, parsed protos) back to the OS (glibc's
    ``malloc_trim``; a no-op elsewhere): 60 of 160 MB that loading four S-MobileNet v2 widths left
    resident (BENCHMARKS.md, "Resident memory")."""
    gc.collect()  # free what only cycles still hold first
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass
