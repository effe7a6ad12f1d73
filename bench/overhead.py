"""Serving overhead: end-to-end HTTP latency on loopback minus the engine time, per request.

The engine time is the server's own ``inference`` entry of ``Server-Timing``
(what the runtime spent on the batch); the rest is HTTP, decoding,
validation, queueing and the response. Sequential requests, one keep-alive
connection, S-MobileNet v2 at 224x224 (random weights). Two clients: the
standard library's http.client (lean, closest to the server's own cost) and
httpx2 (a typical Python client, which adds its own time).

    python -m bench.overhead --out out/overhead [--requests 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from pathlib import Path
from typing import Sequence

import httpx2
import numpy as np

from bench.common import imagenet_checkpoint, noise_jpeg, server_timing
from server.testing import live_server


class StdlibClient:
    """http.client on one keep-alive connection."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, body: bytes, headers: dict) -> tuple[int, dict]:
        self.conn.request("POST", path, body=body, headers=headers)
        response = self.conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}

    def close(self) -> None:
        self.conn.close()


class HttpxClient:
    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx2.Client(timeout=30)

    def post(self, path: str, body: bytes, headers: dict) -> tuple[int, dict]:
        r = self.client.post(self.base + path, content=body, headers=headers)
        return r.status_code, dict(r.headers)

    def close(self) -> None:
        self.client.close()


def measure(client, path: str, body: bytes, headers: dict, n: int) -> dict:
    totals, engine, overhead = [], [], []
    for i in range(n + 20):
        start = time.perf_counter()
        status, response_headers = client.post(path, body, headers)
        elapsed = (time.perf_counter() - start) * 1e3
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}")
        if i < 20:  # warm-up
            continue
        timing = server_timing(response_headers["server-timing"])
        totals.append(elapsed)
        engine.append(timing["inference"])
        overhead.append(elapsed - timing["inference"])
    return {"total_ms": statistics.median(totals), "engine_ms": statistics.median(engine),
            "overhead_ms": statistics.median(overhead), "overhead_p90_ms": float(np.percentile(overhead, 90))}


def serving_requests(width: str) -> dict[str, tuple[str, bytes, dict]]:
    """The two requests the overhead benchmarks time: name -> (path, body, headers), served as model "v2"."""
    rng = np.random.default_rng(0)
    jpeg = noise_jpeg(rng)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
                         "parameters": {"width": float(width)}}).encode()
    return {
        "v2_binary_tensor": (
            "/v2/models/v2/infer",
            header + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
        ),
        "v1_classify_jpeg_224": ("/v1/classify", jpeg, {"content-type": "image/jpeg", "X-Width": width}),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--width", default="0.35")
    parser.add_argument("--loops", default="asyncio,uvloop", help="event loops to compare (--event-loop of serve)")
    parser.add_argument("--out", type=Path, default=Path("out/overhead"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint("s_mobilenet_v2")
    results = {}
    targets = {"v2_binary_tensor": 1.0, "v1_classify_jpeg_224": 2.0}
    requests = serving_requests(args.width)
    for loop in args.loops.split(","):
        with live_server("--checkpoint", str(checkpoint), "--model-name", "v2", "--profile-repeats", "5",
                         "--event-loop", loop) as url:
            for client_name, make in (("http.client", StdlibClient), ("httpx2", HttpxClient)):
                client = make(url)
                try:
                    for name, (path, body, headers) in requests.items():
                        results[f"{name} ({client_name}, {loop})"] = measure(client, path, body, headers, args.requests)
                finally:
                    client.close()
    print(f"median of {args.requests} sequential requests, width {args.width}, S-MobileNet v2 224x224")
    print(
        f"{'request (client, server event loop)':>46} {'total ms':>9} {'engine ms':>10} {'overhead ms':>12} {'p90':>7} "
        f"{'target':>7}"
    )
    for name, r in results.items():
        target = targets[name.split(" ")[0]]
        verdict = "ok" if r["overhead_ms"] <= target else "MISSED"
        print(
            f"{name:>46} {r['total_ms']:>9.3f} {r['engine_ms']:>10.3f} {r['overhead_ms']:>12.3f} "
            f"{r['overhead_p90_ms']:>7.3f} "
            f"{target:>6.1f} {verdict}"
        )
    (args.out / "overhead.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": results,
                                                          "targets_ms": targets}, indent=2))


if __name__ == "__main__":
    main()
