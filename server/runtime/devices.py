"""Where batches run and which backend runs them, resolved without importing torch where it is not needed."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["Device", "resolve_backend", "resolve_device"]


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
        ort = device.type == "cpu" and weights != "shared" and _onnxruntime_available()
        return "onnxruntime" if ort else "torch"
    if backend == "onnxruntime":
        if weights == "shared":
            raise ValueError("shared weights run on the torch backend; use --backend torch (or auto)")
        if device.type != "cpu":
            raise ValueError("the onnxruntime backend runs on CPU; use --backend torch on CUDA")
        if not _onnxruntime_available():
            raise ValueError("backend 'onnxruntime' requested but onnxruntime is not installed")
    return backend
