"""How the model runs: the runtime's part of the settings, as one value (no positional argument lists)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RuntimeConfig"]


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # auto, cpu, cuda
    backend: str = "auto"  # auto, torch, onnxruntime
    threads: int | None = None  # intra-op threads (None: the backend's default)
    precision: str = "fp32"  # fp32, fp16, bf16 (CUDA)
    cuda_graphs: bool = True  # capture a CUDA graph per (width, batch bucket) on CUDA
    weights: str = "per-width"  # per-width (a BN-folded copy per width), shared (one copy; torch)
