"""Runtime: executes one batch at one width with that switch's exported module.

Each width is exported once at load time (BN folded, eval mode); executing a
batch touches no shared mutable state, so the per-switch modules need no lock.
On CUDA, inputs go through pinned host memory and a dedicated stream.
"""

from __future__ import annotations

import torch
from torch import nn

from models import SlimmableNet

__all__ = ["Runtime", "resolve_device", "profile_runtime"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


class Runtime:
    """Per-switch modules of one model on one device."""

    def __init__(self, net: SlimmableNet, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.widths = net.widths
        self.input_shape = (net.in_channels, net.input_size, net.input_size)
        self.num_classes = net.num_classes
        self._switches: dict[float, nn.Module] = {}
        for width in net.widths:
            module = net.switch(width, fold_bn=True).to(self.device)
            if self.device.type == "cuda":
                module = module.to(memory_format=torch.channels_last)
            self._switches[width] = module
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def run(self, width: float, batch: torch.Tensor) -> torch.Tensor:
        """Logits (float32, CPU) for ``batch`` (float32, CPU) at ``width``."""
        module = self._switches[width]
        if self._stream is None:
            return module(batch)
        with torch.cuda.stream(self._stream):
            x = batch.pin_memory().to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            out = module(x).float().cpu()
        return out

    def warm_up(self, batch_sizes, repeats: int = 2) -> None:
        for width in self.widths:
            for b in batch_sizes:
                for _ in range(repeats):
                    self.run(width, torch.zeros(b, *self.input_shape))


def profile_runtime(runtime: Runtime, batch_sizes, repeats: int = 15):
    """Latency profile of every (width, batch size) as the runtime executes it."""
    from policies import measure_profile

    example = torch.zeros(1, *runtime.input_shape)
    return measure_profile(
        lambda w, b: runtime.run(w, example.expand(b, -1, -1, -1)), runtime.widths, batch_sizes, repeats=repeats
    )
