"""Helpers shared by the live benchmarks: a server subprocess on 127.0.0.1 and a checkpoint to serve."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import numpy as np
from PIL import Image

import models

REPO = Path(__file__).resolve().parents[1]


_PORTS_GIVEN: set[int] = set()  # by free_port in this process


def free_port() -> int:
    """A port free on 127.0.0.1 now and never given out before by this process: the kernel can hand
    the same ephemeral port to two probes in a row (a server's HTTP port and its gRPC port once came
    out equal, and the second bind failed)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


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


def noise_jpeg(rng: np.random.Generator, size: int = 224) -> bytes:
    """A ``size`` x ``size`` JPEG (quality 90) of uniform noise: a worst case for the decoder."""
    buffer = io.BytesIO()
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class ServerUrl(str):
    """The server's base URL; ``.pid`` is its process id."""

    def __new__(cls, url: str, pid: int) -> "ServerUrl":
        obj = super().__new__(cls, url)
        obj.pid = pid
        return obj


class LiveServer:
    """``widthwise serve ARGS`` in a subprocess on 127.0.0.1 and a free port; used by tests and benchmarks.

    ``tree`` is the source tree to run (another checkout, for A/B benchmarks).
    Output goes to a temporary file, not a pipe: a pipe nobody reads would
    block the server once full.
    """

    def __init__(self, *args: str, env: dict | None = None, tree: Path = REPO, cpus: set[int] | None = None) -> None:
        """``cpus``: run the server on these cores only (its threads inherit the affinity), as ``taskset`` would."""
        self.port = free_port()
        self.url = ServerUrl(f"http://127.0.0.1:{self.port}", 0)
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log = tempfile.TemporaryFile("w+")
        environ = {**os.environ, **(env or {})}
        if tree != REPO:
            environ["PYTHONPATH"] = str(tree)
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(cmd, cwd=tree, env=environ, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=pin)
        self.url.pid = self.proc.pid

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready within {timeout:g} s: {self.output()[-2000:]}")

    def terminate(self) -> int:
        """SIGTERM (the server drains, then exits); returns the exit code."""
        self.proc.terminate()
        return self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@contextlib.contextmanager
def live_server(*args: str, ready_timeout: float = 300.0, tree: Path = REPO, cpus: set[int] | None = None):
    """``widthwise serve ARGS`` on a free port; yields its base URL (with ``.pid``); SIGTERM on exit."""
    server = LiveServer("--log-level", "warning", *args, tree=tree, cpus=cpus)
    try:
        server.wait_ready(ready_timeout)
        yield server.url
    finally:
        if server.proc.poll() is None:
            server.terminate()
        server.stop()


def server_timing(header: str) -> dict[str, float]:
    """``queue;dur=0.1, inference;dur=2.0`` -> {"queue": 0.1, "inference": 2.0} (ms)."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


@contextlib.contextmanager
def pinned_process_server(cmd: list[str], port: int, cpus: set[int], env: dict | None = None, cwd: Path = REPO,
                          name: str = "server", timeout: float = 300.0, ready_path: str = "/readyz"):
    """Any HTTP server command (a peer, another ASGI server) on ``cpus`` until ``ready_path`` answers
    200; yields ``(base url, pid)``; SIGTERM (then SIGKILL) on exit."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{name} did not start (exit {proc.returncode}): {log.read()[-2000:]}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(url + ready_path, timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def mean_over_rounds(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """One row per distinct ``keys`` (a table cell) with attainment and top-1 per request sent
    averaged over the rows that share them (paired live rounds), ``rounds`` saying how many, and the
    ``sent`` and ``late_200`` counts summed; other fields are the first round's. A cell of one row is
    that row."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault(tuple(row[k] for k in keys), []).append(row)
    merged = []
    for group in cells.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        counts = {k: sum(r[k] for r in group) for k in ("sent", "late_200") if k in group[0]}  # over all rounds
        merged.append({**group[0], "round": None, "rounds": len(group), **counts,
                       "attainment": sum(r["attainment"] for r in group) / len(group),
                       "accuracy_per_sent": sum(r["accuracy_per_sent"] for r in group) / len(group)})
    return merged
