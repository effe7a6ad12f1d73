"""Helpers shared by the live benchmarks: a server subprocess on 127.0.0.1 and a checkpoint to serve."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

import models

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def imagenet_checkpoint(arch: str = "s_mobilenet_v2", folder: Path | None = None) -> Path:
    """A randomly initialised 224x224 ImageNet-size checkpoint with the paper's accuracy per width."""
    folder = folder or Path(tempfile.mkdtemp(prefix="widthwise-bench-"))
    path = folder / f"{arch}.safetensors"
    if not path.exists():
        torch_net = models.create(arch)
        meta = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                "accuracy": models.checkpoint.OFFICIAL_TOP1[arch]}
        models.save_checkpoint(torch_net, path, meta)
    return path


class ServerUrl(str):
    """The server's base URL; ``.pid`` is its process id."""

    def __new__(cls, url: str, pid: int) -> "ServerUrl":
        obj = super().__new__(cls, url)
        obj.pid = pid
        return obj


@contextlib.contextmanager
def live_server(*args: str, ready_timeout: float = 300.0):
    """``widthwise serve ARGS`` on a free port; yields its base URL (with ``.pid``); SIGTERM on exit."""
    port = free_port()
    log = tempfile.TemporaryFile("w+")
    cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited: {log.read()}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready in time")
            time.sleep(0.2)
        yield ServerUrl(url, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def server_timing(header: str) -> dict[str, float]:
    """``queue;dur=0.1, inference;dur=2.0`` -> {"queue": 0.1, "inference": 2.0} (ms)."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out
