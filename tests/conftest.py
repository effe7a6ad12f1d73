"""Shared fixtures: reference layout, checkpoints, in-process and live servers (helpers: tests/helpers.py)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

import models
from server.app import build_app
from server.settings import Settings
from server.testing import LiveServer
from tests.helpers import (
    REFERENCE,
    SHUFFLENET_REFERENCE,
    SYNTHETIC_PROFILE,
    TINY_ACCURACY,
    make_net,
    wait_ready,
)

# Every server a test starts (in process or as a subprocess, which inherits this) exports and profiles
# afresh: what start-up logs and measures must not depend on which test ran first. The cache's own
# tests turn it on with a directory of their own.
os.environ["WIDTHWISE_STARTUP_CACHE"] = "off"
# Likewise no idle-time keep-warm runs: tests that count runtime calls or inject faults per call would
# see them. tests/server/test_keep_warm.py turns it on.
os.environ["WIDTHWISE_KEEP_WARM_MS"] = "0"

# Training and reference forwards in the test process on one thread: torch's default (every core)
# fights the servers the tests start and anything else on the host, and was 2x slower on a busy one.
torch.set_num_threads(1)

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
    for path in (REFERENCE, SHUFFLENET_REFERENCE):
        if not path.is_file():
            pytest.fail(f"reference layout missing at {path}")
    return {**json.loads(REFERENCE.read_text()), **json.loads(SHUFFLENET_REFERENCE.read_text())}


# -- server fixtures -------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised s_convnet6 (16x16 inputs) with serving metadata."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    net = make_net("s_convnet6", seed=1)
    card = models.ModelCard.for_net(net, labels=[f"class{i}" for i in range(10)], accuracy=TINY_ACCURACY)
    models.save_checkpoint(net, path, card)
    return path


@pytest.fixture(scope="session")
def synthetic_profile(tmp_path_factory, tiny_checkpoint) -> Path:
    """SYNTHETIC_PROFILE for the tiny model as served with default settings (its fingerprint matches)."""
    from server.runtime import runtime_fingerprint

    path = tmp_path_factory.mktemp("profile") / "profile.json"
    fingerprint = runtime_fingerprint(models.load_checkpoint(tiny_checkpoint).net)
    path.write_text(json.dumps({**SYNTHETIC_PROFILE, "fingerprint": fingerprint}))
    return path


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


@pytest.fixture(scope="session")
def live_startup_cache(tmp_path_factory) -> Path:
    """One start-up cache for the servers ``live_server`` starts: after the first, a server of the tiny
    model reaches /readyz in ~1.3 s instead of ~3.6 s (no torch import, no export, no profiling). The
    tests of start-up itself start their servers without it."""
    return tmp_path_factory.mktemp("startup-cache")


@pytest.fixture
def live_server(tiny_checkpoint, synthetic_profile, live_startup_cache):
    servers: list[LiveServer] = []

    def start(*extra: str, env: dict | None = None) -> LiveServer:
        cache = {"WIDTHWISE_STARTUP_CACHE": "on", "WIDTHWISE_CACHE_DIR": str(live_startup_cache)}
        server = LiveServer(
            "--checkpoint", str(tiny_checkpoint), "--model-name", "tiny", "--profile-repeats", "3", *extra,
            env={**cache, **(env or {})},
        )
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
    models.save_checkpoint(net, path)
    return path
