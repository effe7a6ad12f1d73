"""Helpers and constants shared by tests (fixtures live in conftest.py, which uses these)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from PIL import Image

import models
from models.universal import UniversalNet
from server.runtime import Runtime

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
# A copy of the project's reference data (shared/reference/official_state_dict_layout.json, made
# from the official slimmable_networks checkpoints); see tests/data/README.md. No test reads outside the repo.
REFERENCE = REPO / "tests" / "data" / "official_state_dict_layout.json"
# S-ShuffleNet's reference, made from the official model code (tests/data/README.md)
SHUFFLENET_REFERENCE = REPO / "tests" / "data" / "s_shufflenet_layout.json"
OFFICIAL_ARCHS = ("s_mobilenet_v1", "s_mobilenet_v2", "s_resnet50", "s_shufflenet")
# Small inputs keep the per-arch tests fast; the layouts do not depend on the input size.
TEST_INPUT_SIZE = {"s_mobilenet_v1": 64, "s_mobilenet_v2": 64, "s_resnet50": 64, "s_shufflenet": 64,
                   "us_mobilenet_v1": 64, "us_mobilenet_v2": 64}
# The official US-Nets' state-dict layout and MACs per width, made from the official model code (tests/data/README.md)
US_REFERENCE = REPO / "tests" / "data" / "us_mobilenet_layout.json"



TINY_ACCURACY = {0.25: 0.90, 0.5: 0.95, 0.75: 0.97, 1.0: 0.98}
# Synthetic latency profile (seconds): decisions in tests follow it, not the noisy machine.
SYNTHETIC_PROFILE = {
    "widths": {
        "0.25": {"1": 0.010, "2": 0.012, "4": 0.015, "8": 0.020},
        "0.5": {"1": 0.050, "2": 0.060, "4": 0.080, "8": 0.100},
        "0.75": {"1": 0.200, "2": 0.240, "4": 0.300, "8": 0.400},
        "1.0": {"1": 0.500, "2": 0.600, "4": 0.700, "8": 0.900},
    }
}


def randomize_batchnorm(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine terms, so export/folding bugs show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                if m.running_mean is not None:  # a universally slimmable BN keeps its statistics in slots
                    m.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                    m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                if m.affine:  # a slot has no affine terms of its own
                    m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                    m.bias.copy_(torch.rand(c, generator=generator) * 0.4 - 0.2)
    return net


def make_net(arch: str, seed: int = 0, **kwargs) -> models.SlimmableNet:
    """``arch`` with random weights and BN statistics; a universally slimmable net's slots all count as calibrated."""
    torch.manual_seed(seed)
    if arch in TEST_INPUT_SIZE and "input_size" not in kwargs:
        kwargs["input_size"] = TEST_INPUT_SIZE[arch]
    net = randomize_batchnorm(models.create(arch, **kwargs), seed)
    if isinstance(net, UniversalNet) and "calibrated" not in kwargs:
        net.calibrated = net.widths
    return net


def wait_ready(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"server not ready: {client.get('/readyz').json()}")


def png_bytes(size=(20, 20), seed: int = 0, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    array = (rng.random((size[1], size[0], channels)) * 255).astype(np.uint8)
    image = Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()




def eventually(read: Callable[[], T], expected: T, timeout: float = 5.0) -> T:
    """Poll ``read()`` until it returns ``expected`` (or time runs out) and return its last value.

    For values the worker thread writes after it has answered the request (it answers first and
    does the per-batch bookkeeping afterwards), which a test may otherwise read a moment too early.
    """
    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.01)
        value = read()
    return value


class FaultInjectingRuntime(Runtime):
    """The real runtime; ``fault(width, samples)``, when set, runs before each batch and may raise
    (a device error, out of memory, a hang). Inject with ``make_client(runtime_factory=FaultInjectingRuntime)``."""

    fault: Callable[[float, int], None] | None = None

    def run(self, width, batch):
        if self.fault is not None:
            self.fault(width, int(batch.shape[0]))
        return super().run(width, batch)
