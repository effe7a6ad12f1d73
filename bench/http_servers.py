"""uvicorn vs granian under the same app and the same open-loop load, server pinned to core 0.

The same widthwise application (S-MobileNet v2 224x224, random weights, policy max-width, one
ONNX Runtime thread, the latency profile measured once and shared) served by ``widthwise serve``
(uvicorn, httptools, asyncio) and by granian (``--interface asgi --factory
server.asgi:create_app``, one worker, one runtime thread, asyncio loop), each pinned to core 0
with this client on core 1. Per server and load: attainment at the client, late 200s, expected
top-1 per request sent, p50/p99, statuses, the client's CPU per request, and the server's CPU
per request (from ``/proc``); plus a closed-loop throughput (8 connections, width pinned).

    python -m bench.http_servers --out out/http_servers [--loads 0.5,1,2,3] [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import httpx2
import numpy as np

from bench.common import imagenet_checkpoint, noise_jpeg, pinned_process_server
from bench.grpc_overhead import process_cpu_s
from bench.load import describe, measure_point
from server.testing import free_port, live_server


@contextlib.contextmanager
def granian_server(env: dict[str, str], cpus: set[int]):
    port = free_port()
    cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "server.asgi:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--runtime-threads", "1",
           "--loop", "asyncio", "--no-ws", "--log-level", "warning"]
    with pinned_process_server(cmd, port, cpus, env, name="granian") as server:
        yield server


def server_tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (granian runs its worker as a child process)."""
    total = process_cpu_s(pid)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += server_tree_cpu_s(int(child))
    return total


async def closed_loop(url: str, body: bytes, seconds: float, connections: int = 8) -> float:
    """Requests per second with ``connections`` clients each sending back to back (width 0.35 pinned)."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client(http: httpx2.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            r = await http.post(url + "/v1/classify", content=body,
                                headers={"content-type": "image/jpeg", "X-Width": "0.35"})
            done += r.status_code == 200

    async with httpx2.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(client(http) for _ in range(connections)))
    return done / seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.http_servers", description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default="0.5,1,2,3")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("out/http_servers"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint("s_mobilenet_v2")
    profile = args.out / "profile.json"
    body = noise_jpeg(np.random.default_rng(0))
    flags = ["--checkpoint", str(checkpoint), "--model-name", "v2", "--threads", "1", "--policy", "max-width"]
    os.sched_setaffinity(0, {1})
    with live_server(*flags, "--save-profile", str(profile), cpus={0}) as url:
        model = httpx2.get(url + "/v1/models").json()["models"][0]
    accuracy = {w["width"]: w["expected_accuracy"] for w in model["widths"]}
    widest_b1_ms = model["widths"][-1]["latency_ms"]["1"]
    budget_ms = 3 * widest_b1_ms
    cap = 1e3 / widest_b1_ms
    env = {"WIDTHWISE_CHECKPOINT": str(checkpoint), "WIDTHWISE_MODEL_NAME": "v2", "WIDTHWISE_THREADS": "1",
           "WIDTHWISE_POLICY": "max-width", "WIDTHWISE_PROFILE": str(profile), "WIDTHWISE_LOG_LEVEL": "warning",
           "WIDTHWISE_STARTUP_CACHE": "off"}
    servers = {
        "uvicorn": lambda: live_server(*flags, "--profile", str(profile), cpus={0}),
        "granian": lambda: granian_server(env, {0}),
    }
    rows = []
    print(f"budget {budget_ms:.1f} ms (3x widest batch-1 {widest_b1_ms:.2f} ms), widest capacity {cap:.0f} req/s")
    for name, start in servers.items():
        with start() as handle:
            url, pid = (handle, handle.pid) if isinstance(handle, str) else handle
            throughput = asyncio.run(closed_loop(url, body, 5.0))
            print(f"{name:>8} closed loop (8 connections, width 0.35): {throughput:.0f} req/s")
            rows.append({"server": name, "closed_loop_rps": throughput})
            for load in (float(x) for x in args.loads.split(",")):
                cpu0 = server_tree_cpu_s(pid)
                row = {"server": name, "load": load, "rate": load * cap,
                       **measure_point(url + "/v1/classify", body, load * cap, args.duration, budget_ms, accuracy)}
                row["server_cpu_ms_per_request"] = (server_tree_cpu_s(pid) - cpu0) / max(1, row["sent"]) * 1e3
                rows.append(row)
                print(
                    f"{name:>8} {load:.1f}x: {describe(row)}, server CPU {row['server_cpu_ms_per_request']:.2f} ms/req"
                )
                time.sleep(1.0)
    (args.out / "http_servers.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "budget_ms": budget_ms, "capacity_rps": cap, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
