"""Helpers shared by the live benchmarks: a checkpoint to serve, request bytes, timing headers, peers on a core.
(The server subprocess itself is :mod:`server.testing`.)"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2
import numpy as np
from PIL import Image

import models

REPO = Path(__file__).resolve().parents[1]


def imagenet_checkpoint(arch: str = "s_mobilenet_v2", folder: Path | None = None) -> Path:
    """A randomly initialised 224x224 ImageNet-size checkpoint with the paper's accuracy per width."""
    folder = folder or Path(tempfile.mkdtemp(prefix="widthwise-bench-"))
    path = folder / f"{arch}.safetensors"
    if not path.exists():
        torch_net = models.create(arch)
        card = models.ModelCard.for_net(torch_net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                        accuracy=models.checkpoint.OFFICIAL_TOP1[arch])
        models.save_checkpoint(torch_net, path, card)
    return path


def noise_jpeg(rng: np.random.Generator, size: int = 224) -> bytes:
    """A ``size`` x ``size`` JPEG (quality 90) of uniform noise: a worst case for the decoder."""
    buffer = io.BytesIO()
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


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
