"""Soak: a bounded mixed-load run against a live server, watching RSS and errors.

Mixed traffic: /v1/classify PNGs with and without budgets and width pins, v2
JSON and binary tensors, some bad requests (which must stay 4xx), at a steady
open-loop rate. Samples the server's RSS every few seconds. Bounded by
--minutes (default 10) and 127.0.0.1 only.

    python -m bench.soak --minutes 10 --rate 40 --out out/soak
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import time
from pathlib import Path
from typing import Sequence

import httpx2
import numpy as np
from PIL import Image

from server.testing import live_server


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def requests_mix(rng: random.Random):
    img = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img, "PNG")
    png = img.getvalue()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    v2_json = json.dumps({"inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32",
                                      "data": x.ravel().tolist()}]}).encode()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 3, 32, 32],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    kinds = [
        ("classify", "/v1/classify", png, {"content-type": "image/png"}, 200),
        ("classify_budget", "/v1/classify", png, {"content-type": "image/png", "X-Latency-Budget-Ms": "50"}, 200),
        ("classify_pinned", "/v1/classify", png, {"content-type": "image/png", "X-Width": "0.5"}, 200),
        ("v2_json", "/v2/models/{m}/infer", v2_json, {"content-type": "application/json"}, 200),
        (
            "v2_binary",
            "/v2/models/{m}/infer",
            head + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(head))},
            200,
        ),
        ("bad_image", "/v1/classify", b"\x89PNG broken", {"content-type": "image/png"}, 400),
    ]
    while True:
        yield rng.choice(kinds)


async def main_async(args) -> dict:
    rng = random.Random(0)
    mix = requests_mix(rng)
    with live_server("--max-batch-size", "8") as url:
        pid = url.pid
        model = httpx2.get(url + "/v1/models").json()["models"][0]["name"]
        counts: dict[str, dict[str, int]] = {}
        unexpected: list[str] = []
        rss: list[tuple[float, int]] = []
        end = time.monotonic() + args.minutes * 60
        start = time.monotonic()
        async with httpx2.AsyncClient(timeout=30) as client:
            async def one(kind, path, body, headers, expected):
                try:
                    r = await client.post(url + path.format(m=model), content=body, headers=headers)
                    status = r.status_code
                except httpx2.HTTPError as exc:
                    status = 0
                    unexpected.append(f"{kind}: {exc!r}")
                counts.setdefault(kind, {}).setdefault(str(status), 0)
                counts[kind][str(status)] += 1
                if status != expected and status not in (503, 504):
                    unexpected.append(f"{kind}: {status}")

            tasks = set()
            next_sample = 0.0
            while time.monotonic() < end:
                kind, path, body, headers, expected = next(mix)
                tasks.add(asyncio.create_task(one(kind, path, body, headers, expected)))
                tasks = {t for t in tasks if not t.done()}
                now = time.monotonic() - start
                if now >= next_sample:
                    rss.append((round(now, 1), rss_bytes(pid)))
                    next_sample += args.sample_s
                await asyncio.sleep(rng.expovariate(args.rate))
            await asyncio.gather(*tasks)
    return {"minutes": args.minutes, "rate": args.rate, "counts": counts, "unexpected": unexpected[:50],
            "unexpected_total": len(unexpected), "rss": rss}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("out/soak"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(main_async(args))
    rss = [b for _, b in report["rss"] if b]
    if rss:
        warm = rss[min(len(rss) - 1, max(1, len(rss) // 10))]  # after the first tenth: warm-up allocations done
        report["rss_start_mb"], report["rss_warm_mb"], report["rss_end_mb"], report["rss_max_mb"] = (
            rss[0] / 2**20, warm / 2**20, rss[-1] / 2**20, max(rss) / 2**20)
        report["rss_growth_after_warmup_mb"] = (rss[-1] - warm) / 2**20
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    total = sum(sum(v.values()) for v in report["counts"].values())
    print(f"sent {total} requests in {args.minutes} min; by kind and status: {report['counts']}")
    print(f"unexpected statuses/errors: {report['unexpected_total']}")
    if rss:
        print(f"RSS MB: start {report['rss_start_mb']:.1f}, after warm-up {report['rss_warm_mb']:.1f}, "
              f"end {report['rss_end_mb']:.1f}, max {report['rss_max_mb']:.1f}; growth after warm-up "
              f"{report['rss_growth_after_warmup_mb']:+.1f} MB")


if __name__ == "__main__":
    main()
