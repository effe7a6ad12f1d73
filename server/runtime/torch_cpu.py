"""The torch backend on CPU: each width's exported module, run eagerly in channels_last where that is faster."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from server.runtime import cpus

__all__ = ["TorchCpuExecutor", "default_torch_threads"]


def default_torch_threads() -> int:
    """torch's own default (the machine's physical cores) capped by the usable CPUs but one, as ONNX
    Runtime's: in a pod with ``limits.cpu: 2`` on a 64-core node torch would otherwise start 32 threads
    on 2 CPUs of quota, and a thread on the event loop's core slows every request's HTTP work (BENCHMARKS.md,
    "Shared weights": batch 1 on two threads against one)."""
    return max(1, min(torch.get_num_threads(), cpus.usable_cpus() - 1))


class TorchCpuExecutor:
    """CPU execution, in channels_last where that is faster: oneDNN's convolutions then run NHWC
    without reordering between layers. One core, medians (BENCHMARKS.md "Shared weights"):
    S-MobileNet v2 224 1.2-1.8x faster than NCHW with shared or per-width weights, its 32 px CIFAR
    twin 1.2-1.4x; the 16 px convnets 0.1 ms slower at batch 1, so small inputs stay NCHW."""

    CHANNELS_LAST_FROM_SIDE = 32  # input side (px) from which channels_last is used

    def __init__(self, module: nn.Module, input_side: int) -> None:
        self.module = module
        self.memory_format = torch.channels_last if input_side >= self.CHANNELS_LAST_FROM_SIDE else \
            torch.contiguous_format

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            return self.module(x.contiguous(memory_format=self.memory_format)).numpy()
