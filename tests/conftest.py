"""Shared fixtures: reference layout, randomised nets, paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference" / "official_state_dict_layout.json"
OFFICIAL_ARCHS = ("s_mobilenet_v1", "s_mobilenet_v2", "s_resnet50")
# Small inputs keep the per-arch tests fast; the layouts do not depend on the input size.
TEST_INPUT_SIZE = {"s_mobilenet_v1": 64, "s_mobilenet_v2": 64, "s_resnet50": 64}


@pytest.fixture(scope="session")
def reference_layout() -> dict:
    if not REFERENCE.is_file():
        pytest.fail(f"reference layout missing at {REFERENCE} (shared/ must sit beside the checkout)")
    return json.loads(REFERENCE.read_text())


def randomize_batchnorm(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine terms, so export/folding bugs show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(c, generator=generator) * 0.4 - 0.2)
    return net


def make_net(arch: str, seed: int = 0, **kwargs) -> models.SlimmableNet:
    torch.manual_seed(seed)
    if arch in TEST_INPUT_SIZE and "input_size" not in kwargs:
        kwargs["input_size"] = TEST_INPUT_SIZE[arch]
    return randomize_batchnorm(models.create(arch, **kwargs), seed)
