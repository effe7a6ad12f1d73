"""/docs and /redoc render in a real headless Chromium with no internet: their assets come from the server."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.deploy.test_artifacts import tool

# Every host name but the loopback address fails to resolve: a page that needs a CDN stays blank.
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def chromium(*args: str) -> subprocess.CompletedProcess:
    cmd = [tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--virtual-time-budget=15000", *OFFLINE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def docs_server(tiny_checkpoint):
    from server.testing import LiveServer

    server = LiveServer("--checkpoint", str(tiny_checkpoint), "--model-name", "tiny", "--profile-repeats", "3")
    server.wait_ready()
    yield server
    server.stop()


def test_swagger_ui_lists_the_operations_offline(docs_server, tmp_path):
    dom = chromium("--dump-dom", docs_server.url + "/docs").stdout
    for path in ("/v1/classify", "/v1/models", "/v2/models/{name}/infer", "/readyz"):
        assert f'class="opblock-summary-path" data-path="{path}"' in dom, path
    shot = tmp_path / "docs.png"
    chromium("--window-size=1280,1000", f"--screenshot={shot}", docs_server.url + "/docs")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # The operations list paints coloured method badges (POST green, GET blue); a blank page is all white.
    green = ((pixels[..., 1] > 150) & (pixels[..., 0] < 120) & (pixels[..., 2] < 160)).sum()
    blue = ((pixels[..., 2] > 200) & (pixels[..., 0] < 120)).sum()
    assert green > 500 and blue > 500, (green, blue)


def test_redoc_renders_the_operations_offline(docs_server):
    dom = chromium("--dump-dom", docs_server.url + "/redoc").stdout
    assert "redoc-wrap" in dom or "api-content" in dom, dom[:500]
    for summary in ("Classify", "List Models", "Infer", "Readyz"):
        assert summary in dom, summary
    assert "/v1/classify" in dom
