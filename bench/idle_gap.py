"""The first request after an idle spell: latency vs idle gap, with and without keep-warm.

Each configuration is a `widthwise serve` of its own (the embedded digits model unless
``--checkpoint``), started in turn and probed alone (two live servers would warm each other's shared
libraries). A probe is one request on a fresh connection, like `curl`, sent after sleeping ``gap``
seconds with nothing else running. Blocks of configurations alternate (A B A B ...) so a drifting
host hits both alike. Reports per configuration and gap the median and 90th percentile latency at
the client, the share answered 200 within the budget, and the 504s.

    python -m bench.idle_gap --out out/idle_gap [--rounds 3] [--gaps 0.05,0.3,1,3] [--budget-ms 25] \
        [--keep-warm-ms 0,100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import time
from pathlib import Path
from typing import Sequence

from bench.common import REPO
from server.testing import LiveServer


def probe(port: int, body: bytes, budget_ms: float) -> tuple[int, float]:
    """One POST /v1/classify on a new connection; (status, seconds at the client)."""
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST", "/v1/classify", body, {"Content-Type": "image/png", "X-Latency-Budget-Ms": f"{budget_ms:g}"}
        )
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - began
    finally:
        conn.close()


def run_block(args_: list[str], gaps: list[float], repeats: int, body: bytes, budget_ms: float,
              rng: random.Random) -> dict[float, list[tuple[int, float]]]:
    server = LiveServer("--log-level", "warning", *args_)
    try:
        server.wait_ready(300)
        time.sleep(1.0)  # past start-up's own activity
        order = [g for g in gaps for _ in range(repeats)]
        rng.shuffle(order)
        results: dict[float, list[tuple[int, float]]] = {g: [] for g in gaps}
        for gap in order:
            time.sleep(gap)
            results[gap].append(probe(server.port, body, budget_ms))
        return results
    finally:
        server.stop()


def summarise(samples: list[tuple[int, float]], budget_ms: float) -> dict:
    latencies = sorted(s * 1e3 for _, s in samples)
    return {
        "n": len(samples),
        "median_ms": statistics.median(latencies),
        "p90_ms": latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))],
        "on_time": sum(1 for status, s in samples if status == 200 and s * 1e3 <= budget_ms) / len(samples),
        "status_504": sum(1 for status, _ in samples if status == 504),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.idle_gap", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/idle_gap"))
    parser.add_argument("--rounds", type=int, default=3, help="blocks per configuration (alternating)")
    parser.add_argument("--repeats", type=int, default=4, help="probes per gap in each block")
    parser.add_argument("--gaps", default="0.05,0.3,1,3", help="idle seconds before a probe, comma-separated")
    parser.add_argument("--budget-ms", type=float, default=25.0, help="the README's first request: 25 ms")
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "digit_7.png")
    parser.add_argument("--keep-warm-ms", default="0,100", help="--keep-warm-ms of each configuration (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("extra", nargs="*", help="more `widthwise serve` flags for every configuration (after --)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gaps = [float(g) for g in args.gaps.split(",")]
    configs = {(f"keep-warm {float(ms):g} ms" if float(ms) else "keep-warm off"): ["--keep-warm-ms", ms]
               for ms in args.keep_warm_ms.split(",")}
    body = args.image.read_bytes()
    rng = random.Random(args.seed)
    samples: dict[str, dict[float, list]] = {name: {g: [] for g in gaps} for name in configs}
    for _ in range(args.rounds):
        for name, flags in configs.items():
            block = run_block([*flags, *args.extra], gaps, args.repeats, body, args.budget_ms, rng)
            for gap, values in block.items():
                samples[name][gap].extend(values)
    rows = [{"config": name, "gap_s": gap, **summarise(values, args.budget_ms)}
            for name, per_gap in samples.items() for gap, values in per_gap.items()]
    print(
        f"first request after an idle gap, {args.budget_ms:g} ms budget, {args.rounds} x {args.repeats} probes per cell"
    )
    print(f"{'config':28} {'gap s':>6} {'median ms':>10} {'p90 ms':>8} {'on time':>8} {'504s':>5}")
    for r in rows:
        print(f"{r['config']:28} {r['gap_s']:>6g} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} {r['on_time']:>8.2f} "
              f"{r['status_504']:>5}")
    (args.out / "idle_gap.json").write_text(json.dumps({"budget_ms": args.budget_ms, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
