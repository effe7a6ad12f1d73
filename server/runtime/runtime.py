"""Runtime: executes one batch at one width with that switch's exported module.

Each width is exported once at load time (BN folded, eval mode) and wrapped
in an executor for the chosen backend:

- ``onnxruntime`` (CPU default when installed): each switch exported to ONNX
  in memory (conv channels zero-padded to ORT's channel block) and run by its
  own ONNX Runtime session.
- ``torch``: the exported module; on CUDA with channels_last, optional
  fp16/bf16, pinned host memory, a dedicated stream and CUDA graphs captured
  per (width, batch bucket).

Executing a batch touches no state shared between widths, so concurrent
widths need no lock; one worker thread drives the runtime.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from server.runtime import cpus
from server.runtime.config import RuntimeConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from models import SlimmableNet

__all__ = ["Device", "Runtime", "RuntimeConfig", "resolve_device", "resolve_backend", "profile_runtime",
           "runtime_fingerprint", "export_onnx", "export_switch_onnx", "ort_session_options",
           "shared_initializers", "use_global_thread_pool", "return_freed_heap"]

log = logging.getLogger("widthwise.runtime")

# Batches cross the runtime's boundary as numpy arrays: the ONNX Runtime path (the CPU default) never
# needs torch, so a warm start from the start-up cache serves without importing it (~1 s of start-up).


@dataclass(frozen=True)
class Device:
    """Where batches run (``torch.device``'s ``type``/``index``/``str``, without importing torch)."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def as_torch(self) -> "torch.device":
        import torch

        return torch.device(self.type, self.index) if self.index is not None else torch.device(self.type)


def _cuda_available() -> bool:
    """``torch.cuda.is_available()``, without importing torch on a host with no NVIDIA driver (no
    ``/dev/nvidiactl``), where the answer is no."""
    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(name: str) -> Device:
    """``auto`` -> ``cuda:0`` when available, else ``cpu``; CUDA always gets an explicit index (metric labels)."""
    if name == "auto":
        name = "cuda" if _cuda_available() else "cpu"
    if name == "cuda" and not _cuda_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return Device("cuda", 0) if name == "cuda" else Device(name)


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: Device, weights: str = "per-width") -> str:
    """``auto``: ONNX Runtime on CPU when installed (2-4x faster than eager PyTorch there), torch on CUDA
    or with shared weights (ONNX Runtime needs each width's weights as its own constants)."""
    if backend == "auto":
        return "onnxruntime" if device.type == "cpu" and weights != "shared" and _onnxruntime_available() else "torch"
    if backend == "onnxruntime":
        if weights == "shared":
            raise ValueError("shared weights run on the torch backend; use --backend torch (or auto)")
        if device.type != "cpu":
            raise ValueError("the onnxruntime backend runs on CPU; use --backend torch on CUDA")
        if not _onnxruntime_available():
            raise ValueError("backend 'onnxruntime' requested but onnxruntime is not installed")
    return backend


# Bump when a change to how widths execute changes their speed: latency profiles cached by earlier code
# (server.startup_cache) are then measured again instead of planning with the old speeds.
# 2: shared weights fold BN at each call; the torch CPU executor runs channels_last.
EXECUTION_REVISION = 2


class Executor(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class TorchCpuExecutor:
    """CPU execution, in channels_last where that is faster: oneDNN's convolutions then run NHWC
    without reordering between layers. One core, medians (BENCHMARKS.md "Resident memory", session 16):
    S-MobileNet v2 224 1.2-1.8x faster than NCHW with shared or per-width weights, its 32 px CIFAR
    twin 1.2-1.4x; the 16 px convnets 0.1 ms slower at batch 1, so small inputs stay NCHW."""

    CHANNELS_LAST_FROM_SIDE = 32  # input side (px) from which channels_last is used

    def __init__(self, module: "nn.Module", input_side: int) -> None:
        import torch

        self.module = module
        self.memory_format = torch.channels_last if input_side >= self.CHANNELS_LAST_FROM_SIDE else \
            torch.contiguous_format

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            return self.module(x.contiguous(memory_format=self.memory_format)).numpy()


# The TorchScript exporter is deprecated but needs no extra packages (the dynamo one needs
# onnxscript). A process-wide filter, not warnings.catch_warnings(): start-up runs this in a
# thread, and catch_warnings swaps global state under the feet of other threads.
LEGACY_EXPORTER_WARNINGS = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed. Please remove usage of this function",
)


def export_onnx(module: "nn.Module", input_shape: tuple[int, ...]) -> bytes:
    """The module as an ONNX model with a dynamic batch dimension."""
    import torch

    for message in LEGACY_EXPORTER_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=DeprecationWarning)
    buffer = io.BytesIO()
    torch.onnx.export(
        module, (torch.zeros(1, *input_shape),), buffer, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=17,
    )
    return buffer.getvalue()


def export_switch_onnx(net: SlimmableNet, width: float, channel_block: int | None = None) -> bytes:
    """Switch ``width`` as ONNX, BN folded; with ``channel_block``, conv channel counts padded with
    zeros to that multiple (exact; keeps narrow switches in ORT's blocked layout, see channel_padding)."""
    model = export_onnx(net.switch(width, fold_bn=True), (net.in_channels, net.input_size, net.input_size))
    if channel_block:
        import onnx

        from server.runtime.channel_padding import pad_channels  # needs onnx, which the GPU image does not ship

        proto = onnx.load_from_string(model)
        if pad_channels(proto, channel_block):
            model = proto.SerializeToString()
    return model


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
    import onnxruntime as ort

    if _GLOBAL_POOL_THREADS is None:
        ort.set_global_thread_pool_sizes(threads, 1)
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, None)
        _GLOBAL_POOL_THREADS = threads
    return _GLOBAL_POOL_THREADS


def return_freed_heap() -> None:
    """Give the heap freed by start-up (exported ONNX bytes, parsed protos) back to the OS (glibc's
    ``malloc_trim``; a no-op elsewhere): 60 of 160 MB that loading four S-MobileNet v2 widths left
    resident (BENCHMARKS.md, "Resident memory of the served widths")."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()  # free what only cycles still hold first
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def default_ort_threads() -> int:
    """All usable cores but one: ORT's pool threads spin after each batch, and the event loop
    needs a core to parse requests meanwhile (on 2 cores, 2 pool threads doubled the
    HTTP overhead without making batch-1 inference faster inside the server). Usable means
    the affinity mask and the container's CPU quota, not the host's core count."""
    return max(1, cpus.usable_cpus() - 1)


def default_torch_threads() -> int:
    """torch's own default (the machine's physical cores) capped by the usable CPUs: in a pod with
    ``limits.cpu: 2`` on a 64-core node, torch would otherwise start 32 threads on 2 CPUs of quota."""
    import torch

    return max(1, min(torch.get_num_threads(), cpus.usable_cpus()))


def ort_session_options():
    import onnxruntime as ort

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
        import onnxruntime as ort

        options = ort_session_options()
        for name, value in shared.items():
            options.add_initializer(name, value)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def find_shared_initializers(models_by_width: dict[float, bytes]) -> tuple[list[np.ndarray], dict[float, dict[str, int]]]:
    """Initializers whose values are identical in several switches (e.g. S-MobileNet v2's shared
    classifier): their arrays, and per switch {initializer name: index into the arrays}."""
    import hashlib

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


def _ort_values(arrays: list[np.ndarray], uses: dict[float, dict[str, int]]) -> tuple[dict[float, dict[str, object]], list]:
    from onnxruntime import OrtValue

    values = [OrtValue.ortvalue_from_numpy(a) for a in arrays]
    per_width = {width: {name: values[i] for name, i in names.items()} for width, names in uses.items()}
    return per_width, [*arrays, *values]


def _cached_shared_initializers(models_by_width: dict[float, bytes], block: int | None, cache) -> tuple[dict, list]:
    """:func:`shared_initializers`, from the start-up cache when it has them: finding them parses every
    switch with the ``onnx`` package (import and parse ~0.3 s of a warm start)."""
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
            if set(uses) == set(widths) and all(0 <= i < len(arrays) for names in uses.values() for i in names.values()):
                return _ort_values(arrays, uses)
        except (KeyError, ValueError, TypeError, AttributeError):
            pass
        log.warning("cache entry %s is invalid; finding shared initializers again", name)
    arrays, uses = find_shared_initializers(models_by_width)
    encoded = json.dumps({repr(w): names for w, names in uses.items()}).encode()
    cache.save_arrays(name, {"uses": np.frombuffer(encoded, np.uint8), **{f"a{i}": a for i, a in enumerate(arrays)}})
    return _ort_values(arrays, uses)


class TorchCudaExecutor:
    """CUDA execution: channels_last, optional half precision, dedicated stream, CUDA graphs per batch bucket."""

    def __init__(self, module: "nn.Module", input_shape: tuple[int, ...], device: Device,
                 precision: str, cuda_graphs: bool, buckets: list[int]) -> None:
        import torch

        self.device = device.as_torch()
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.module = module.to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last).eval()
        self.input_shape = input_shape
        self.stream = torch.cuda.Stream(self.device)
        self.buckets = sorted(buckets)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        if cuda_graphs:
            for b in self.buckets:
                self.graphs[b] = self._capture(b)

    def _capture(self, batch: int):
        import torch

        static_in = torch.zeros(batch, *self.input_shape, device=self.device, dtype=self.dtype).contiguous(
            memory_format=torch.channels_last)
        with torch.cuda.stream(self.stream), torch.inference_mode():
            for _ in range(3):  # warm up cuDNN autotuning on the side stream before capture
                self.module(static_in)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                static_out = self.module(static_in)
        return graph, static_in, static_out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        n = batch.shape[0]
        host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).pin_memory()
        with torch.cuda.stream(self.stream), torch.inference_mode():
            x = host.to(self.device, non_blocking=True).to(self.dtype).contiguous(memory_format=torch.channels_last)
            bucket = next((b for b in self.buckets if b >= n), None)
            if bucket is not None and bucket in self.graphs:
                graph, static_in, static_out = self.graphs[bucket]
                static_in[:n].copy_(x)
                if n < bucket:
                    static_in[n:].zero_()
                graph.replay()
                out = static_out[:n].float().cpu()
            else:
                out = self.module(x).float().cpu()
        return out.numpy()


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
        progress=None,
        cache=None,
        weights: str = "per-width",
    ) -> None:
        """``progress(width)`` is called as each width's executor is ready (start-up progress lines);
        ``cache`` (a :class:`~server.startup_cache.StartupCache`) keeps exported switches between starts;
        ``weights``: ``per-width`` (each width a BN-folded copy) or ``shared`` (every width reads the
        net's one copy: :meth:`~models.net.SlimmableNet.at_width`)."""
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
            self.threads = use_global_thread_pool(threads or default_ort_threads())
            from server.runtime.cpu_features import nchwc_block

            block = nchwc_block() if channel_padding else None
            onnx_models = {}
            for width in net.widths:
                onnx_models[width] = _cached_export(net, width, block, cache)
                if progress is not None:
                    progress(width)
            shared, self._keep_alive = _cached_shared_initializers(onnx_models, block, cache)
            for width in net.widths:
                self._executors[width] = OnnxRuntimeExecutor(onnx_models[width], shared[width])
        else:
            import torch

            torch.set_num_threads(threads or default_torch_threads())
            self.threads = torch.get_num_threads()
            for width in net.widths:
                module = net.at_width(width) if weights == "shared" else net.switch(width, fold_bn=True)
                if self.device.type == "cuda":
                    # no graphs on shared weights: each captured graph's private memory pool would keep the
                    # weights folded at each call alive, the copies sharing exists to avoid
                    self._executors[width] = TorchCudaExecutor(
                        module, self.input_shape, self.device, precision, cuda_graphs and weights != "shared",
                        batch_buckets or [1])
                else:
                    self._executors[width] = TorchCpuExecutor(module, net.input_size)
                if progress is not None:
                    progress(width)
        self.fingerprint = runtime_fingerprint(net, device, backend, self.threads, precision, weights)
        log.info("runtime: %s backend on %s (%s)", self.backend, self.device, precision)

    @classmethod
    def from_config(cls, net: "SlimmableNet", config: RuntimeConfig, batch_buckets: list[int] | None = None,
                    progress=None, cache=None) -> "Runtime":
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


def _cached_export(net: "SlimmableNet", width: float, block: int | None, cache) -> bytes:
    """Switch ``width`` as ONNX from the start-up cache when it holds an intact entry, else exported
    (and stored)."""
    if cache is None:
        return export_switch_onnx(net, width, block)
    key = cache.export_key(block)
    model = cache.load_export(key, width)  # None when missing or corrupt (it says which)
    if model is None:
        model = export_switch_onnx(net, width, block)
        cache.save_export(key, width, model)
    return model


def runtime_fingerprint(
    net: "SlimmableNet", device: str = "auto", backend: str = "auto", threads: int | None = None, precision: str = "fp32",
    weights: str = "per-width",
) -> dict:
    """What a latency profile measures: this model on this device, backend, precision and thread count,
    as a :class:`Runtime` built with the same arguments in this process would run it.

    A profile taken under any other fingerprint predicts the wrong latencies (a 224px
    S-MobileNet v2 profile loaded into the 32px digits server was 10x off).
    """
    resolved = resolve_device(device)
    backend = resolve_backend(backend, resolved, weights)
    if backend == "onnxruntime":  # one pool per process, sized by the first session (use_global_thread_pool)
        threads = _GLOBAL_POOL_THREADS or threads or default_ort_threads()
    else:
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


def profile_runtime(runtime: Runtime, batch_sizes, repeats: int = 15, progress=None):
    """Latency profile of every (width, batch size) as the runtime executes it, with the runtime's
    fingerprint; ``progress(width)`` is called as each width is done."""
    from policies import measure_profile

    examples = {}

    def run(width: float, batch: int) -> None:
        if batch not in examples:
            examples[batch] = np.zeros((batch, *runtime.input_shape), np.float32)
        runtime.run(width, examples[batch])

    profile = measure_profile(
        run, runtime.widths, batch_sizes,
        repeats=repeats, progress=progress,
    )
    profile.fingerprint = dict(runtime.fingerprint)
    return profile
