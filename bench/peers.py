"""widthwise against a bare FastAPI + ONNX Runtime app serving the same ONNX files.

The bare app is what a user would write without widthwise: one FastAPI route taking a v2 binary
FP32 tensor, one ONNX Runtime session per width (the very files widthwise exported, from its
start-up cache), no queue, no budgets; it runs one fixed width. Both servers are pinned to core 0
with one ORT thread, the client on core 1. Reported:

- per-request server CPU in a closed loop at a pinned width, minus raw ONNX Runtime time for the
  same batch-1 run in this process: the serving overhead, and its ratio to the bare app's;
- open-loop Poisson load at 0.5x-3x of the widest width's batch-1 capacity, budget 3x the widest
  batch-1 latency: attainment at the client, late answers, expected top-1 per request sent for
  widthwise (max-width) and the bare app at each width.

With ``--triton-python PY`` the same files are also served by Triton (nvidia-pytriton: tritonserver
2.51 with a Python backend calling ONNX Runtime, dynamic batching up to 8, no queue delay), one
fixed width per server, pinned like the others; its CPU counts every process of the server
(tritonserver and the Python backend's stub). pytriton needs numpy<2, so it gets a venv of its own:

    python3.11 -m venv out/triton-venv && out/triton-venv/bin/pip install nvidia-pytriton "numpy<2" onnxruntime
    python -m bench.peers --out out/peers [--loads 0.5,1,2,3] [--duration 8] [--triton-python
    out/triton-venv/bin/python]

The Python backend's stub embeds libpython: it must load that interpreter's own (found first on
``LD_LIBRARY_PATH``), or the standard library and the library disagree (a ``_thread.RLock``
attribute error when the model loads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import httpx2
import numpy as np

from bench.common import imagenet_checkpoint, pinned_process_server, server_timing
from bench.grpc_overhead import process_cpu_s
from bench.load import describe, measure_point, v2_request
from server.testing import free_port, live_server

BARE_APP = '''
import json, os, sys, time
import numpy as np, onnxruntime as ort
from fastapi import FastAPI, Request, Response

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["BARE_ONNX"], options, providers=["CPUExecutionProvider"])
width = os.environ["BARE_WIDTH"]
app = FastAPI()

@app.post("/v2/models/v2/infer")
async def infer(request: Request) -> Response:
    body = await request.body()
    length = int(request.headers["inference-header-content-length"])
    header = json.loads(body[:length])
    shape = header["inputs"][0]["shape"]
    x = np.frombuffer(body, dtype="<f4", offset=length).reshape(shape)
    began = time.thread_time()
    logits = session.run(None, {"input": x})[0]
    inference_ms = (time.thread_time() - began) * 1e3
    raw = logits.astype("<f4").tobytes()
    head = json.dumps({"model_name": "v2", "outputs": [{"name": "logits", "datatype": "FP32",
                       "shape": list(logits.shape), "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return Response(head + raw, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head)), "X-Served-Width": width,
                             "Server-Timing": f"inference;dur={inference_ms:.3f}"})

@app.get("/readyz")
async def ready() -> dict:
    return {"status": "ready"}
'''


TRITON_APP = '''
import os
import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["PEER_ONNX"], options, providers=["CPUExecutionProvider"])

@batch
def infer(input):
    return {"logits": session.run(None, {"input": np.ascontiguousarray(input, dtype=np.float32)})[0]}

ports = [int(p) for p in os.environ["PEER_PORTS"].split(",")]
config = TritonConfig(http_address="127.0.0.1", http_port=ports[0], grpc_address="127.0.0.1", grpc_port=ports[1],
                      metrics_port=ports[2], log_verbose=0)
with Triton(config=config) as triton:
    triton.bind(model_name="v2", infer_func=infer,
                inputs=[Tensor(name="input", dtype=np.float32, shape=(3, 224, 224))],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(-1,))],
                config=ModelConfig(max_batch_size=8, batcher=DynamicBatcher(max_queue_delay_microseconds=0)))
    triton.serve()
'''


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (Triton runs several processes)."""
    total = 0.0
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            total += process_cpu_s(p)
    return total


@contextlib.contextmanager
def triton_server(python: str, onnx_path: Path, cpus: set[int]):
    """Triton (pytriton) serving ``onnx_path`` as model ``v2`` on ``cpus``; yields ``(base url, pid)``."""
    python = os.path.abspath(python)  # not resolve(): the venv's python is a symlink to the base interpreter
    libdir = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    ports = [free_port() for _ in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "triton_app.py").write_text(TRITON_APP)
        env = {"PEER_ONNX": str(onnx_path), "PEER_PORTS": ",".join(map(str, ports)), "OMP_NUM_THREADS": "1",
               "LD_LIBRARY_PATH": ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
        tree: list[int] = []
        try:
            with pinned_process_server(
                [python, "triton_app.py"],
                ports[0],
                cpus,
                env,
                cwd=Path(tmp),
                name="triton",
                timeout=180,
                ready_path="/v2/models/v2/ready",
            ) as (url, pid):  # up before the model
                tree = descendants(pid)
                yield url, pid
        finally:
            for p in tree[1:]:  # tritonserver and stubs outlive a terminated parent
                with contextlib.suppress(OSError):
                    os.kill(p, 9)


@contextlib.contextmanager
def bare_server(onnx_path: Path, width: float, cpus: set[int]):
    """The bare app under uvicorn (httptools, asyncio), like ``widthwise serve``'s defaults."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bare_app.py").write_text(BARE_APP)
        cmd = [sys.executable, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1", "--port", str(port),
               "--http", "httptools", "--loop", "asyncio", "--log-level", "warning", "--no-access-log"]
        env = {"BARE_ONNX": str(onnx_path), "BARE_WIDTH": repr(width), "OMP_NUM_THREADS": "1"}
        with pinned_process_server(cmd, port, cpus, env, cwd=Path(tmp), name="bare app", timeout=120) as server:
            yield server

def one_thread_session(onnx_path: Path):
    """An ONNX Runtime session of ``onnx_path`` on one thread, as the bare app runs it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class RawOrt:
    """Batch-1 ONNX Runtime of one file on one thread in this process: the floor every server pays."""

    def __init__(self, onnx_path: Path) -> None:
        self.session = one_thread_session(onnx_path)
        self.x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        for _ in range(20):
            self.session.run(None, {"input": self.x})

    def median_ms(self, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.session.run(None, {"input": self.x})
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


def on_core(core: int, fn, *args):
    """Run ``fn`` with this process moved to ``core`` (raw ORT on the servers' core), then back."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        return fn(*args)
    finally:
        os.sched_setaffinity(0, before)


def raw_ort_ms(onnx_path: Path, repeats: int = 300) -> float:
    """Median batch-1 ONNX Runtime time of this file on one thread, in this (pinned) process."""
    return RawOrt(onnx_path).median_ms(repeats)


def closed_loop_costs(url: str, pid: int, path: str, body: bytes, headers: dict, n: int = 600,
                      warmup: int = 30, expect: int = 200) -> tuple[float, float, float]:
    """One keep-alive connection sending back to back; per request: the server's CPU (every process
    of it), its main thread's alone (the event loop: HTTP, parsing, scheduling, replies; widthwise's
    inference runs on another thread, the bare app's on it), and the inference time the server
    reports in ``Server-Timing`` (NaN where it does not), all in ms. Every answer must have status
    ``expect`` (a refusal's cost is timed with requests the server must refuse)."""
    with httpx2.Client(timeout=30) as client:
        for _ in range(warmup):
            client.post(url + path, content=body, headers=headers)
        cpu0, loop0, inference_ms = tree_cpu_s(pid), process_cpu_s(pid, thread=pid), 0.0
        for _ in range(n):
            r = client.post(url + path, content=body, headers=headers)
            if r.status_code != expect:
                raise RuntimeError(f"{url}: HTTP {r.status_code} {r.text[:200]}")
            inference_ms += server_timing(r.headers.get("server-timing", "")).get("inference", math.nan)
        return ((tree_cpu_s(pid) - cpu0) / n * 1e3, (process_cpu_s(pid, thread=pid) - loop0) / n * 1e3,
                inference_ms / n)


def closed_loop_cpu_ms(url: str, pid: int, path: str, body: bytes, headers: dict, n: int = 600) -> float:
    """Server CPU per request (every process of the server), one keep-alive connection sending back to back."""
    return closed_loop_costs(url, pid, path, body, headers, n)[0]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default="0.5,1,2,3")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("out/peers"))
    parser.add_argument("--triton-python", default=None,
                        help="a Python with nvidia-pytriton, numpy<2 and onnxruntime: also drive Triton")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint("s_mobilenet_v2")
    cache = args.out / "cache"
    profile_path = args.out / "profile.json"
    path, body, headers = v2_request()
    flags = ["--checkpoint", str(checkpoint), "--model-name", "v2", "--threads", "1", "--startup-cache", "on",
             "--cache-dir", str(cache)]
    os.sched_setaffinity(0, {1})
    report: dict = {"date": time.strftime("%Y-%m-%d"), "overhead": [], "load": []}
    with live_server(*flags, "--policy", "max-width", "--save-profile", str(profile_path), cpus={0}) as url:
        model = httpx2.get(url + "/v1/models").json()["models"][0]
        accuracy = {w["width"]: w["expected_accuracy"] for w in model["widths"]}
        widths = [w["width"] for w in model["widths"]]
        widest_b1_ms = model["widths"][-1]["latency_ms"]["1"]
        onnx = {w: next(cache.glob(f"export-*/{w!r}.onnx")).resolve() for w in widths}
        # Serving overhead at two widths: widthwise pinned to the width vs the bare app of that width.
        for width in (widths[0], widths[-1]):
            raw = on_core(0, raw_ort_ms, onnx[width])
            ours = closed_loop_cpu_ms(url, url.pid, path, body, {**headers, "X-Width": repr(width)})
            with bare_server(onnx[width], width, {0}) as (bare_url, bare_pid):
                bare = closed_loop_cpu_ms(bare_url, bare_pid, path, body, headers)
            triton = None
            if args.triton_python:
                with triton_server(args.triton_python, onnx[width], {0}) as (triton_url, triton_pid):
                    triton = closed_loop_cpu_ms(triton_url, triton_pid, path, body, headers)
            row = {"width": width, "raw_ort_ms": raw, "widthwise_cpu_ms": ours, "bare_cpu_ms": bare,
                   "triton_cpu_ms": triton, "widthwise_over_raw_ms": ours - raw, "bare_over_raw_ms": bare - raw,
                   "triton_over_raw_ms": triton - raw if triton is not None else None,
                   "overhead_ratio": (ours - raw) / (bare - raw) if bare > raw else None}
            report["overhead"].append(row)
            print(f"width {width}: raw ORT {raw:.2f} ms; server CPU/request widthwise {ours:.2f} ms, bare {bare:.2f} ms"
                  + (f", triton {triton:.2f} ms" if triton is not None else "")
                  + f"; over raw {ours - raw:.2f} vs {bare - raw:.2f} ms ({row['overhead_ratio'] or 0:.2f}x)")
    budget_ms = 3 * widest_b1_ms
    capacity = 1e3 / widest_b1_ms
    loads = [float(x) for x in args.loads.split(",")]
    servers = [("widthwise max-width", lambda: live_server(*flags, "--policy", "max-width", "--profile",
                                                            str(profile_path), cpus={0}), None)]
    servers += [(f"bare {w!r}", (lambda w=w: bare_server(onnx[w], w, {0})), w) for w in widths]
    if args.triton_python:
        servers += [(f"triton {w!r}", (lambda w=w: triton_server(args.triton_python, onnx[w], {0})), w) for w in widths]
    print(f"budget {budget_ms:.1f} ms, loads x {capacity:.0f} req/s")
    for name, start, fixed_width in servers:
        with start() as handle:
            url = handle if isinstance(handle, str) else handle[0]
            for load in loads:
                row = {
                    "server": name,
                    "load": load,
                    **measure_point(
                        url + path,
                        body,
                        load * capacity,
                        args.duration,
                        budget_ms,
                        accuracy,
                        headers=headers,
                        width=fixed_width,
                    ),
                }
                report["load"].append(row)
                print(f"{name:>20} {load:.1f}x: {describe(row)}")
                time.sleep(1.0)
    report["budget_ms"], report["capacity_rps"] = budget_ms, capacity
    (args.out / "peers.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
