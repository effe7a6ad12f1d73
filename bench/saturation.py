"""Saturation: is the model's core busy whenever work waits, and does admission refuse only what
would be late? widthwise at a pinned width against the bare FastAPI + ONNX Runtime app of
:mod:`bench.peers` serving the same ONNX file, in one run.

Both servers are pinned to core 0 with one inference thread, the client on core 1. Per backend
(``onnx``: widthwise's default, per-width ONNX Runtime sessions; ``shared``: ``--weights shared``;
``torch``: ``--backend torch``) and width (the narrowest and the widest):

- closed loop: ``--clients`` connections sending back to back for ``--duration`` seconds, no budget:
  answers per second and the server's CPU (cores). The bare app of a torch backend runs the same net
  in torch (its BN folded, like widthwise's switches) one request at a time.
- open loop, width pinned: Poisson arrivals at 0.5x and 1x of the bare app's closed-loop throughput
  in the same cell, budget 3x the widest width's batch-1 inference measured at the start (this VM's
  speed moves 1.0-1.5x, so neither comes from the start-up profile):
  on-time answers at the client for both servers; and, from a second widthwise server with
  ``--admission-audit`` (it serves that share of its would-be deadline refusals anyway), how many
  of the audited refusals were answered in time: the share of refusals that were needless.

Idle servers are stopped (SIGSTOP) while another is measured, and each cell's servers alternate
their order round by round. Prints the medians and writes ``saturation.json``:

    python -m bench.saturation --out out/saturation [--backends onnx,shared,torch] [--rounds 3]
        [--pins 1.0] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Sequence

import httpx2

from bench.common import imagenet_checkpoint, pinned_process_server, server_timing
from bench.http_client import LeanClient
from bench.load import run_point, v2_request
from bench.overhead_ab import worktree
from bench.peers import bare_server, tree_cpu_s
from server.testing import free_port, live_server

BARE_TORCH_APP = '''
import json, os, time
import numpy as np, torch
from fastapi import FastAPI, Request, Response
from models.checkpoint import load_checkpoint
from server.runtime.torch_cpu import TorchCpuExecutor

torch.set_num_threads(1)
net = load_checkpoint(os.environ["BARE_CHECKPOINT"]).net
width = float(os.environ["BARE_WIDTH"])
# the module widthwise itself runs at this width (shared: one copy, BN folded at each call)
module = net.at_width(width) if os.environ["BARE_WEIGHTS"] == "shared" else net.switch(width, fold_bn=True)
run = TorchCpuExecutor(module, net.input_size)
app = FastAPI()

@app.post("/v2/models/v2/infer")
async def infer(request: Request) -> Response:
    body = await request.body()
    length = int(request.headers["inference-header-content-length"])
    shape = json.loads(body[:length])["inputs"][0]["shape"]
    x = np.frombuffer(body, dtype="<f4", offset=length).reshape(shape)
    began = time.thread_time()
    logits = run(x)
    inference_ms = (time.thread_time() - began) * 1e3
    raw = logits.astype("<f4").tobytes()
    head = json.dumps({"model_name": "v2", "outputs": [{"name": "logits", "datatype": "FP32",
                       "shape": list(logits.shape), "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return Response(head + raw, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head)),
                             "Server-Timing": f"inference;dur={inference_ms:.3f}"})

@app.get("/readyz")
async def ready() -> dict:
    return {"status": "ready"}
'''

SERVE_ARGS = {"onnx": [], "shared": ["--weights", "shared"], "torch": ["--backend", "torch"]}


@contextlib.contextmanager
def bare_torch_server(checkpoint: Path, width: float, weights: str, cpus: set[int]):
    """The bare app running the checkpoint in torch at one width as widthwise's torch runtime does
    (``weights``: per-width or shared), one request at a time, under uvicorn like the ORT one."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bare_torch_app.py").write_text(BARE_TORCH_APP)
        cmd = [sys.executable, "-m", "uvicorn", "bare_torch_app:app", "--host", "127.0.0.1", "--port", str(port),
               "--http", "httptools", "--loop", "asyncio", "--log-level", "warning", "--no-access-log"]
        env = {"BARE_CHECKPOINT": str(checkpoint), "BARE_WIDTH": repr(width), "BARE_WEIGHTS": weights,
               "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        with pinned_process_server(cmd, port, cpus, env, cwd=Path(tmp), name="bare torch app", timeout=120) as server:
            yield server


async def _closed_loop(url: str, body: bytes, headers: dict, clients: int, duration: float, warmup: float):
    """``clients`` senders back to back; (answers, statuses) counted after ``warmup`` for ``duration``."""
    target = urllib.parse.urlsplit(url)
    client = LeanClient(target.hostname, target.port, target.path, body, headers, max_connections=clients)
    statuses: dict[int, int] = {}
    began = time.perf_counter()
    measure_from, stop_at = began + warmup, began + warmup + duration

    async def sender() -> None:
        while time.perf_counter() < stop_at:
            answer = await client.post()
            if measure_from <= time.perf_counter() <= stop_at:
                statuses[answer.status] = statuses.get(answer.status, 0) + 1

    try:
        await asyncio.gather(*(sender() for _ in range(clients)))
    finally:
        client.close()
    return statuses


def closed_loop(url: str, pid: int, path: str, body: bytes, headers: dict, clients: int, duration: float,
                warmup: float = 1.0) -> dict:
    """Answers per second and the server's CPU (cores) with ``clients`` connections back to back."""
    cpu0, wall0 = tree_cpu_s(pid), time.perf_counter()
    statuses = asyncio.run(_closed_loop(url + path, body, headers, clients, duration, warmup))
    # CPU over the whole run (warm-up included): the closed loop keeps the server saturated throughout
    cores = (tree_cpu_s(pid) - cpu0) / (time.perf_counter() - wall0)
    ok = statuses.get(200, 0)
    return {"throughput_rps": ok / duration, "server_cores": cores,
            "statuses": {str(k): v for k, v in statuses.items()}}


def open_loop(url: str, path: str, body: bytes, headers: dict, rate: float, duration: float, budget_ms: float,
              seed: int = 11) -> dict:
    """Poisson arrivals at ``rate`` (:func:`bench.load.run_point`): the share answered 200 within
    ``budget_ms`` at the client, late 200s, statuses."""
    rows, _ = asyncio.run(run_point(url + path, body, rate, duration, budget_ms, "poisson", headers, seed=seed))
    statuses: dict[str, int] = {}
    for status, _, _ in rows:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    on_time = sum(1 for status, latency, _ in rows if status == 200 and latency <= budget_ms)
    late = sum(1 for status, latency, _ in rows if status == 200 and latency > budget_ms)
    return {"sent": len(rows), "on_time": on_time / len(rows), "late_200": late, "statuses": statuses}


def batch1_inference_ms(url: str, path: str, body: bytes, headers: dict, n: int = 40) -> float:
    """Median inference time (Server-Timing) of ``n`` sequential batch-1 requests."""
    times = []
    with httpx2.Client(timeout=30) as client:
        for _ in range(n):
            answer = client.post(url + path, content=body, headers=headers)
            times.append(server_timing(answer.headers.get("server-timing", ""))["inference"])
    return statistics.median(times)


def audits(url: str) -> dict[str, float]:
    """``widthwise_admission_audits_total`` by verdict, now."""
    found = {"on_time": 0.0, "late": 0.0}
    for line in httpx2.get(url + "/metrics").text.splitlines():
        if line.startswith("widthwise_admission_audits_total{"):
            verdict = line.split('verdict="', 1)[1].split('"', 1)[0]
            found[verdict] += float(line.rsplit(" ", 1)[1])
    return found


@contextlib.contextmanager
def alone(pid: int, others: list[int], settle_s: float = 1.5):
    """The servers in ``others`` stopped (SIGSTOP) while ``pid`` is measured, so an idle peer's timers
    (widthwise's keep-warm) take nothing from it; resumed after, with ``settle_s`` for a resumed
    widthwise to see its event loop on time again (a stopped loop reads as seconds of lag)."""
    stopped = [p for p in others if p != pid]
    for p in stopped:
        os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)
        time.sleep(settle_s)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.saturation", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="onnx,shared,torch")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=4.0, help="closed-loop seconds per cell and round")
    parser.add_argument("--loads", default="0.5,1")
    parser.add_argument("--open-duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell, servers in alternating order")
    parser.add_argument("--audit-share", type=float, default=0.25, help="--admission-audit of the audited server")
    parser.add_argument("--closed-only", action="store_true")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also widthwise from a worktree of this commit (column baseline): a live A/B")
    parser.add_argument("--pins", default=None, help="widths to pin, comma-separated (default: narrowest and widest)")
    parser.add_argument("--out", type=Path, default=Path("out/saturation"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint("s_mobilenet_v2", args.out).resolve()  # the bare torch app runs elsewhere
    path, body, headers = v2_request()
    os.sched_setaffinity(0, {1})
    report: dict = {"date": time.strftime("%Y-%m-%d"), "clients": args.clients, "closed": [], "open": [],
                    "audit_share": args.audit_share}
    for backend in args.backends.split(","):
        cache = (args.out / f"cache-{backend}").resolve()  # a baseline server runs in its worktree
        flags = ["--checkpoint", str(checkpoint), "--model-name", "v2", "--threads", "1", "--startup-cache", "on",
                 "--cache-dir", str(cache), *SERVE_ARGS[backend]]
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(live_server(*flags, cpus={0}))
            audited = None if args.closed_only else stack.enter_context(
                live_server(*flags, "--admission-audit", str(args.audit_share), cpus={0}))
            baseline = None
            if args.baseline:
                tree = stack.enter_context(worktree(args.baseline))
                baseline = stack.enter_context(live_server(*flags, cpus={0}, tree=tree))
            model = httpx2.get(url + "/v1/models").json()["models"][0]
            widths = [w["width"] for w in model["widths"]]
            latency = {w["width"]: w["latency_ms"] for w in model["widths"]}
            with alone(url.pid, [s.pid for s in (audited, baseline) if s]):
                widest_ms = batch1_inference_ms(url, path, body, {**headers, "X-Width": repr(widths[-1])})
            budget_ms = 3 * widest_ms
            print(f"{backend}: the widest width's batch-1 inference now {widest_ms:.2f} ms (start-up profile "
                  f"{latency[widths[-1]]['1']:.2f}); budget {budget_ms:.1f} ms", flush=True)
            pins = [float(w) for w in args.pins.split(",")] if args.pins else [widths[0], widths[-1]]
            for width in pins:
                report["closed"] += width_cells(args, backend, width, checkpoint, cache, url, audited, baseline,
                                                 path, body, headers, budget_ms, report)
                (args.out / "saturation.json").write_text(json.dumps(report, indent=2))
    print_summary(report)


def width_cells(args, backend, width, checkpoint, cache, url, audited, baseline, path, body, headers, budget_ms,
                report) -> list[dict]:
    """Closed- and open-loop cells at ``width`` for widthwise (its audited twin, a baseline) and the bare app."""
    pin = {**headers, "X-Width": repr(width)}
    if backend == "onnx":
        bare = bare_server(next(cache.glob(f"export-*/{width!r}.onnx")).resolve(), width, {0})
    else:  # shared weights and torch: widthwise runs torch; so does the bare app
        bare = bare_torch_server(checkpoint, width, "shared" if backend == "shared" else "per-width", {0})
    rows = []
    with bare as (bare_url, bare_pid):
        pids = [url.pid, bare_pid] + [s.pid for s in (audited, baseline) if s]
        servers = [("widthwise", url, url.pid, pin), ("bare", bare_url, bare_pid, headers)]
        if baseline:
            servers.append(("baseline", baseline, baseline.pid, pin))
        for round_ in range(args.rounds):
            for name, target, pid, h in (servers if round_ % 2 == 0 else servers[::-1]):
                with alone(pid, pids):
                    row = {"backend": backend, "width": width, "server": name, "round": round_,
                           **closed_loop(target, pid, path, body, h, args.clients, args.duration)}
                rows.append(row)
                print(f"{backend:>6} {width:<5} {name:>9} closed loop: {row['throughput_rps']:.1f} answers/s, "
                      f"{row['server_cores']:.2f} cores, {row['statuses']}", flush=True)
        if args.closed_only:
            return rows
        # 1x: what the bare app answered per second in this cell's closed loop, the same minutes' capacity
        capacity = statistics.median(r["throughput_rps"] for r in rows if r["server"] == "bare")
        servers.append(("audited", audited, audited.pid, pin))
        for load in (float(x) for x in args.loads.split(",")):
            for round_ in range(args.rounds):
                for name, target, pid, h in (servers if round_ % 2 == 0 else servers[::-1]):
                    with alone(pid, pids):
                        before = audits(target) if name == "audited" else None
                        row = {"backend": backend, "width": width, "server": name, "load": load, "round": round_,
                               "budget_ms": budget_ms,
                               **open_loop(target, path, body, h, load * capacity, args.open_duration, budget_ms,
                                           seed=11 + round_)}
                        if before is not None:
                            after = audits(target)
                            row["audits"] = {k: after[k] - before[k] for k in after}
                    report["open"].append(row)
                    audit = row.get("audits")
                    print(f"{backend:>6} {width:<5} {name:>9} {load:g}x: on time {row['on_time']:.3f}, late 200s "
                          f"{row['late_200']}, {row['statuses']}"
                          + (f", audited refusals in time {audit['on_time']:.0f} of "
                             f"{audit['on_time'] + audit['late']:.0f}" if audit else ""), flush=True)
    return rows


def print_summary(report: dict) -> None:
    """Medians over rounds: closed-loop answers/s and the widthwise / bare ratio; open-loop on-time
    shares; the share of audited refusals that would have made it."""
    print("\nclosed loop (answers/s, median over rounds)")
    cells = sorted({(r["backend"], r["width"]) for r in report["closed"]})
    for backend, width in cells:
        rates = {name: statistics.median(r["throughput_rps"] for r in report["closed"]
                                         if (r["backend"], r["width"], r["server"]) == (backend, width, name))
                 for name in ("widthwise", "bare", "baseline")
                 if any(r["server"] == name for r in report["closed"])}
        print(f"  {backend:>6} {width:<5} widthwise {rates['widthwise']:.1f}, bare {rates['bare']:.1f}, "
              f"ratio {rates['widthwise'] / rates['bare']:.3f}"
              + (f"; baseline {rates['baseline']:.1f}" if "baseline" in rates else ""))
    if report["open"]:
        print("open loop, width pinned (on-time share, median over rounds; audited: refusals that would have made it)")
    for backend, width, load in sorted({(r["backend"], r["width"], r["load"]) for r in report["open"]}):
        rows = [r for r in report["open"] if (r["backend"], r["width"], r["load"]) == (backend, width, load)]
        on_time = {name: statistics.median(r["on_time"] for r in rows if r["server"] == name)
                   for name in ("widthwise", "bare", "audited", "baseline") if any(r["server"] == name for r in rows)}
        needless = sum(r["audits"]["on_time"] for r in rows if r["server"] == "audited")
        total = sum(r["audits"]["on_time"] + r["audits"]["late"] for r in rows if r["server"] == "audited")
        print(f"  {backend:>6} {width:<5} {load:g}x: widthwise {on_time['widthwise']:.3f}, bare {on_time['bare']:.3f}"
              + (f", baseline {on_time['baseline']:.3f}" if "baseline" in on_time else "") + "; "
              f"audited refusals in time {needless:.0f} of {total:.0f}"
              + (f" ({needless / total:.1%})" if total else ""))


if __name__ == "__main__":
    main()
