"""Server CPU per request, pinned: this tree against a baseline commit and the bare FastAPI + ORT app.

Issue #14's per-request CPU target compares widthwise's CPU over raw ONNX Runtime with the bare
app's. Both move by +-20% between minutes on a shared VM, so the servers run side by side, each
pinned to core 0 with one ORT thread (this client on core 1), and take turns in blocks of
closed-loop requests on one keep-alive connection; the table gives medians over blocks. Every
server loads the same checkpoint (and the bare app the ONNX file widthwise exported for the width).
Raw ONNX Runtime is timed again in every block (on the servers' core, between the servers' turns),
so the issue's literal ratio -- (CPU - raw ORT) / (bare app's CPU - raw ORT) -- is taken per block
against the raw time of the same minutes ("over raw vs bare"), not one raw figure from the start.

    python -m bench.request_cpu --baseline 5ed2f9b --blocks 8 --out out/request_cpu
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Sequence

from bench.common import imagenet_checkpoint
from bench.overhead import serving_requests
from bench.overhead_ab import worktree
from bench.peers import RawOrt, bare_server, closed_loop_costs, on_core
from server.testing import live_server

SERVER_CORE, CLIENT_CORE = 0, 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.request_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="commit (or ref) to compare this tree against")
    parser.add_argument("--blocks", type=int, default=8, help="turns per server")
    parser.add_argument("--requests", type=int, default=300, help="requests per block")
    parser.add_argument("--width", default="0.35")
    parser.add_argument("--out", type=Path, default=Path("out/request_cpu"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint("s_mobilenet_v2", args.out.resolve())  # the baseline runs in its worktree
    cache = args.out.resolve() / "cache"
    flags = ["--checkpoint", str(checkpoint), "--model-name", "v2", "--threads", "1", "--startup-cache", "on",
             "--cache-dir", str(cache)]
    requests = serving_requests(args.width)
    os.sched_setaffinity(0, {CLIENT_CORE})
    with contextlib.ExitStack() as stack:
        servers = {"this tree": stack.enter_context(live_server(*flags, cpus={SERVER_CORE}))}
        if args.baseline:
            base = stack.enter_context(worktree(args.baseline))
            servers[args.baseline] = stack.enter_context(live_server(*flags, cpus={SERVER_CORE}, tree=base))
        onnx = next(cache.glob(f"export-*/{float(args.width)!r}.onnx")).resolve()
        bare_url, bare_pid = stack.enter_context(bare_server(onnx, float(args.width), {SERVER_CORE}))
        raw_ort = on_core(SERVER_CORE, RawOrt, onnx)  # raw ORT on the servers' core
        raw = on_core(SERVER_CORE, raw_ort.median_ms, 300)
        cells: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        raw_per_block = []
        for block in range(args.blocks):
            raw_per_block.append(on_core(SERVER_CORE, raw_ort.median_ms, 100))
            for kind, (path, body, headers) in requests.items():
                targets = [(name, url, url.pid) for name, url in servers.items()]
                if kind == "v2_binary_tensor":  # the bare app serves the v2 tensor only
                    targets.append(("bare app", bare_url, bare_pid))
                shift = block % len(targets)  # each server takes each place in the order in turn
                for name, url, pid in targets[shift:] + targets[:shift]:
                    cells.setdefault((name, kind), []).append(
                        closed_loop_costs(url, pid, path, body, headers, n=args.requests, warmup=20))
    rows = []
    bare = statistics.median(cpu - inference for cpu, _, inference in cells[("bare app", "v2_binary_tensor")])
    bare_cpu = [cpu for cpu, _, _ in cells[("bare app", "v2_binary_tensor")]]
    print(f"width {args.width}, raw ORT {raw:.3f} ms (batch 1, one thread, core {SERVER_CORE}); "
          f"median of {args.blocks} blocks x {args.requests} requests, ms per request; serving = CPU - inference;"
          f" loop = the main thread's CPU")
    print(f"{'request':>22} {'server':>12} {'CPU':>7} {'inference':>10} {'serving':>8} {'vs bare':>8} {'raw vs':>8} "
          f"{'loop':>7}  serving per block")
    for (name, kind), values in cells.items():
        cpu = statistics.median(v[0] for v in values)
        loop = statistics.median(v[1] for v in values)
        inference = statistics.median(v[2] for v in values)
        serving = statistics.median(v[0] - v[2] for v in values)
        ratio = serving / bare if kind == "v2_binary_tensor" and bare > 0 else None
        # the literal measure, block by block against that block's raw ORT time
        literal = statistics.median((v[0] - r) / (b - r) for v, r, b in zip(values, raw_per_block, bare_cpu)) \
            if kind == "v2_binary_tensor" else None
        rows.append({"request": kind, "server": name, "cpu_ms": cpu, "inference_ms": inference, "serving_ms": serving,
                     "serving_vs_bare": ratio, "loop_cpu_ms": loop, "over_raw_ms": cpu - raw,
                     "over_raw_vs_bare": literal, "blocks": values})
        print(
            f"{kind:>22} {name:>12} {cpu:7.3f} {inference:10.3f} {serving:8.3f} "
            f"{f'{ratio:.2f}x' if ratio is not None else '':>8} {f'{literal:.2f}x' if literal is not None else '':>8} "
            f"{loop:7.3f}  {[round(v[0] - v[2], 2) for v in values]}"
        )
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "width": args.width,
        "raw_ort_ms": raw,
        "raw_ort_ms_per_block": raw_per_block,
        "baseline": args.baseline,
        "blocks": args.blocks,
        "requests": args.requests,
        "rows": rows,
    }
    (args.out / "request_cpu.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'request_cpu.json'}")


if __name__ == "__main__":
    main()
