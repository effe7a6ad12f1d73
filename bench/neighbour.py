"""A CPU-hungry neighbour on the server's core: what the server answers while it runs, and how soon it
is back once it stops.

One live server (S-MobileNet v2 224, random weights, ONNX Runtime on one thread) pinned to core 0, the
load generator on core 1 sending v2 binary tensors at a steady rate; from ``--hog-from`` to
``--hog-until`` seconds, ``--hogs`` busy-loop processes share core 0 with the server. Prints, per
half-second window of send time, the share of requests answered 200 within the budget, and how long
after the neighbour stopped the server answered ``--recovered`` of requests on time again. Writes JSON.

    python -m bench.neighbour --out out/neighbour
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shlex
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.common import imagenet_checkpoint
from bench.load import run_point, v2_request
from server.testing import live_server

WINDOW_S = 0.5


def _burn(core: int, seconds: float) -> None:
    os.sched_setaffinity(0, {core})
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def window_row(start_s: float, answers: list, budget_ms: float) -> dict:
    """Shares of one window's answers: on time, answered late, refused 503 / 504; median latency and the
    mean width served."""
    n = len(answers)
    served = [a for a in answers if a.status == 200]
    widths = [float(a.headers["x-served-width"]) for a in served if "x-served-width" in a.headers]
    return {"from_s": start_s, "sent": n,
            "on_time": sum(a.elapsed_ms <= budget_ms for a in served) / n,
            "late": sum(a.elapsed_ms > budget_ms for a in served) / n,
            "503": sum(a.status == 503 for a in answers) / n, "504": sum(a.status == 504 for a in answers) / n,
            "p50_ms": float(np.median([a.elapsed_ms for a in answers])),
            "mean_width": float(np.mean(widths)) if widths else float("nan")}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.neighbour", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second")
    parser.add_argument("--budget-ms", type=float, default=40.0)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of load")
    parser.add_argument("--hog-from", type=float, default=3.0)
    parser.add_argument("--hog-until", type=float, default=8.0)
    parser.add_argument("--hogs", type=int, default=1, help="busy-loop processes on the server's core")
    parser.add_argument("--recovered", type=float, default=0.95, help="on-time share that counts as recovered")
    parser.add_argument("--serve-args", default="", help="extra serve flags (e.g. --admission best_effort)")
    parser.add_argument("--width", type=float, default=None, help="pin every request to this width")
    parser.add_argument("--baseline-tree", type=Path, default=None, help="run another checkout's server instead")
    parser.add_argument("--out", type=Path, default=Path("out/neighbour"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint("s_mobilenet_v2")
    path, body, headers = v2_request()
    os.sched_setaffinity(0, {1})
    answers: list = []
    if args.width is not None:
        headers = {**headers, "X-Width": str(args.width)}
    with live_server("--checkpoint", str(checkpoint), "--model-name", "v2", "--threads", "1",
                     *shlex.split(args.serve_args), tree=args.baseline_tree, cpus={0}) as url:
        hogs = [multiprocessing.Process(target=_burn, args=(0, args.hog_until - args.hog_from))
                for _ in range(args.hogs)]
        started = time.perf_counter() + 0.2  # run_point sends its first request 0.2 s after it starts

        def start_hogs() -> None:
            time.sleep(max(0.0, started + args.hog_from - time.perf_counter()))
            for hog in hogs:
                hog.start()

        starter = threading.Thread(target=start_hogs, daemon=True)
        starter.start()
        asyncio.run(run_point(url + path, body, args.rate, args.duration, args.budget_ms, "poisson", headers,
                              answers=answers))
        starter.join()
        for hog in hogs:
            hog.join()
    windows: dict[int, list] = {}
    for send_at, answer in answers:
        windows.setdefault(int(send_at / WINDOW_S), []).append(answer)
    rows = [window_row(k * WINDOW_S, v, args.budget_ms) for k, v in sorted(windows.items())]
    recovered_at = next((r["from_s"] for r in rows if r["from_s"] >= args.hog_until
                         and all(x["on_time"] >= args.recovered for x in rows if x["from_s"] >= r["from_s"])), None)
    print(f"{'window s':>9} {'sent':>5} {'on time':>8} {'late':>6} {'503':>6} {'504':>6} {'p50 ms':>7} {'width':>6}")
    for r in rows:
        phase = "neighbour" if args.hog_from <= r["from_s"] < args.hog_until else ""
        print(f"{r['from_s']:>9.1f} {r['sent']:>5} {r['on_time']:>8.3f} {r['late']:>6.3f} {r['503']:>6.3f} "
              f"{r['504']:>6.3f} {r['p50_ms']:>7.1f} {r['mean_width']:>6.2f}  {phase}")
    during = [r for r in rows if args.hog_from <= r["from_s"] < args.hog_until]
    during_on_time = sum(r["on_time"] * r["sent"] for r in during) / max(1, sum(r["sent"] for r in during))
    print(f"during the neighbour: {during_on_time:.3f} "
          f"on time; back to {args.recovered:.0%} from "
          f"{'never' if recovered_at is None else f'{recovered_at - args.hog_until:.1f} s after it stopped'}")
    report = {"date": time.strftime("%Y-%m-%d"), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "during_on_time": during_on_time,
              "recovered_after_s": None if recovered_at is None else recovered_at - args.hog_until}
    (args.out / "neighbour.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'neighbour.json'}")


if __name__ == "__main__":
    main()
