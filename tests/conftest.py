"""Shared fixtures: reference layout, randomised nets, paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models

REPO = Path(__file__).resolve().parents[1]
# A copy of the project's reference data (shared/reference/official_state_dict_layout.json, made
# from the official slimmable_networks checkpoints); see tests/data/README.md. No test reads outside the repo.
REFERENCE = REPO / "tests" / "data" / "official_state_dict_layout.json"
OFFICIAL_ARCHS = ("s_mobilenet_v1", "s_mobilenet_v2", "s_resnet50")
# Small inputs keep the per-arch tests fast; the layouts do not depend on the input size.
TEST_INPUT_SIZE = {"s_mobilenet_v1": 64, "s_mobilenet_v2": 64, "s_resnet50": 64}


LIVE_FIXTURES = {"live_server", "docs_server", "prometheus", "live_schema"}


def pytest_collection_modifyitems(items) -> None:
    """Markers by what a test needs, so groups can be deselected (`pytest -m "not live and not deploy"`)."""
    for item in items:
        if LIVE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)
        if "tests/deploy/" in item.nodeid:
            item.add_marker(pytest.mark.deploy)


@pytest.fixture(scope="session")
def reference_layout() -> dict:
    if not REFERENCE.is_file():
        pytest.fail(f"reference layout missing at {REFERENCE}")
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


# -- server fixtures -------------------------------------------------------------

import contextlib  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bench.common import LiveServer, free_port  # noqa: E402,F401  (re-exported for the tests)
from server.app import build_app  # noqa: E402
from server.settings import Settings  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised s_convnet6 (16x16 inputs) with serving metadata."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    net = make_net("s_convnet6", seed=1)
    meta = {"mean": [0.5] * 3, "std": [0.5] * 3, "labels": [f"class{i}" for i in range(10)], "accuracy": TINY_ACCURACY}
    models.save_checkpoint(net, path, meta)
    return path


@pytest.fixture(scope="session")
def synthetic_profile(tmp_path_factory, tiny_checkpoint) -> Path:
    """SYNTHETIC_PROFILE for the tiny model as served with default settings (its fingerprint matches)."""
    from server.runtime import runtime_fingerprint

    path = tmp_path_factory.mktemp("profile") / "profile.json"
    fingerprint = runtime_fingerprint(models.load_checkpoint(tiny_checkpoint))
    path.write_text(json.dumps({**SYNTHETIC_PROFILE, "fingerprint": fingerprint}))
    return path


def wait_ready(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"server not ready: {client.get('/readyz').json()}")


@pytest.fixture
def make_client(tiny_checkpoint):
    """``make_client(**settings) -> TestClient`` (ready), closed after the test; ``client.registry`` is fresh."""
    stack = contextlib.ExitStack()

    def factory(wait: bool = True, runtime_factory=None, **overrides) -> TestClient:
        if "profile" in overrides:  # a synthetic profile must not learn the real (much faster) batch times
            overrides.setdefault("profile_ewma_alpha", 0.0)
        settings = Settings(**{"checkpoint": tiny_checkpoint, "model_name": "tiny", "profile_repeats": 3, **overrides})
        registry = CollectorRegistry()
        extra = {"runtime_factory": runtime_factory} if runtime_factory is not None else {}
        app = build_app(settings, registry=registry, **extra)
        client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
        client.registry = registry
        client.engine = client.app.state.engine
        if wait:
            wait_ready(client)
        return client

    with stack:
        yield factory


def png_bytes(size=(20, 20), seed: int = 0, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    array = (rng.random((size[1], size[0], channels)) * 255).astype(np.uint8)
    image = Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def live_server(tiny_checkpoint, synthetic_profile):
    servers: list[LiveServer] = []

    def start(*extra: str, env: dict | None = None) -> LiveServer:
        server = LiveServer("--checkpoint", str(tiny_checkpoint), "--model-name", "tiny", "--profile-repeats", "3", *extra, env=env)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def slow_checkpoint(tmp_path_factory) -> Path:
    """S-ResNet-50 at 0.75/1.0 (random weights, 224x224): tens of ms per request on a CPU, slow enough
    to keep a queue during shutdown and for 5x its capacity to be a load this machine can generate."""
    path = tmp_path_factory.mktemp("slow") / "resnet.safetensors"
    net = models.create("s_resnet50", widths=(0.75, 1.0), num_classes=10)
    models.save_checkpoint(net, path, {"mean": [0.5] * 3, "std": [0.5] * 3})
    return path
