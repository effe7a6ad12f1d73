"""Live server on CUDA: readiness, /v1/classify, v2 infer equal to the CPU reference, GPU gauges, SIGTERM drain.

Uses only the standard library as client, so it runs wherever the server's own packages are installed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import models
from models.checkpoint import DEFAULT_CHECKPOINT

PORT = 8765
URL = f"http://127.0.0.1:{PORT}"


def get(path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(URL + path, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):  # not listening yet
        return 0, b""


def post(path: str, body: bytes, headers: dict) -> tuple[int, dict, dict]:
    req = urllib.request.Request(URL + path, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers), json.loads(r.read())


def main(argv: Sequence[str] | None = None) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--device", "cuda", "--port", str(PORT),
                             "--policy", "slack"])
    try:
        start = time.monotonic()
        while time.monotonic() - start < 120:
            if get("/readyz")[0] == 200:
                break
            time.sleep(0.5)
        print(f"ready after {time.monotonic() - start:.1f} s: {get('/readyz')}")
        model = json.loads(get("/v1/models")[1])["models"][0]
        print("model:", model["name"], model["device"], model["backend"],
              {w["width"]: w["latency_ms"] for w in model["widths"]})
        png = Path("examples/digit_7.png").read_bytes()
        for budget in ("100", "2"):
            status, headers, body = post(
                "/v1/classify", png, {"content-type": "image/png", "X-Latency-Budget-Ms": budget}
            )
            print(
                f"classify budget {budget} ms -> {status} width {body['width']} top {body['predictions'][0]} timing "
                f"{body['timing_ms']}"
            )
        net = models.load_checkpoint(DEFAULT_CHECKPOINT).net
        x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
        request = {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "parameters": {"width": 0.5},
        }
        status, _, body = post(
            f"/v2/models/{model['name']}/infer", json.dumps(request).encode(), {"content-type": "application/json"}
        )
        logits = np.asarray(body["outputs"][0]["data"]).reshape(4, -1)
        with torch.inference_mode():
            reference = net(torch.from_numpy(x), width=0.5).numpy()
        rel = float(np.abs(logits - reference).max() / np.abs(reference).max())
        print(f"v2 infer on CUDA vs CPU reference: status {status}, rel err {rel:.2e}")
        time.sleep(1.5)  # let the load sampler read NVML
        metrics = get("/metrics")[1].decode()
        print(
            "\n".join(
                line for line in metrics.splitlines() if line.startswith(("widthwise_gpu_", "widthwise_model_info"))
            )
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        print(f"server exit code after SIGTERM: {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
