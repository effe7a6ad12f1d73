"""The torch backend on CUDA: channels_last, optional half precision, a dedicated stream and CUDA graphs
captured per (width, batch bucket)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from server.runtime.devices import Device

__all__ = ["TorchCudaExecutor"]


class TorchCudaExecutor:
    """CUDA execution: channels_last, optional half precision, dedicated stream, CUDA graphs per batch bucket."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], device: Device,
                 precision: str, cuda_graphs: bool, buckets: list[int]) -> None:
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
