"""CUDA path benchmark: per-width latency and throughput for eager vs CUDA graphs vs fp16/bf16,
and their error against fp32 eager. Runs its CPU-safe parts where there is no GPU.

    python bench/gpu.py --out out/gpu          # bench/gpu.sh wraps it for the GPU machine
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import models
from server.runtime import Runtime

VARIANTS = {  # name: (precision, cuda_graphs)
    "eager_fp32": ("fp32", False),
    "graphs_fp32": ("fp32", True),
    "eager_fp16": ("fp16", False),
    "graphs_fp16": ("fp16", True),
    "graphs_bf16": ("bf16", True),
}


def time_calls(fn, x, repeats: int) -> float:
    for _ in range(5):
        fn(x)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)  # returns CPU logits, so the GPU work is complete
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def bench_arch(arch: str, batches: list[int], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    net = models.create(arch)
    runtimes = {name: Runtime(net, "cuda", "torch", precision=p, cuda_graphs=g, batch_buckets=batches)
                for name, (p, g) in VARIANTS.items()}
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, net.input_size, net.input_size)
        for width in net.widths:
            reference = runtimes["eager_fp32"].run(width, x)
            for name, runtime in runtimes.items():
                out = runtime.run(width, x)
                rel = float(np.abs(out - reference).max() / np.abs(reference).max())
                ms = time_calls(lambda t, r=runtime, w=width: r.run(w, t), x, repeats)
                rows.append({"arch": arch, "width": width, "batch": batch, "variant": name, "latency_ms": ms,
                             "throughput_per_s": batch / ms * 1e3, "rel_err_vs_fp32_eager": rel})
    return rows


def cpu_safe_checks() -> dict:
    """What runs without a GPU: the CPU executors agree with the slimmable forward."""
    net = models.create("s_mobilenet_v2_cifar")
    x = torch.randn(2, 3, 32, 32)
    errors = {}
    for backend in ("torch", "onnxruntime"):
        runtime = Runtime(net, "cpu", backend)
        with torch.inference_mode():
            errors[backend] = max(float(np.abs(runtime.run(w, x.numpy()) - net(x, width=w).numpy()).max())
                                  for w in net.widths)
    return errors


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="s_mobilenet_v2,s_resnet50")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("out/gpu"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "torch": torch.__version__,
                    "cpu_checks_max_abs_err": cpu_safe_checks(), "rows": [], "errors": []}
    print(f"CPU executors vs slimmable forward, max abs error: {report['cpu_checks_max_abs_err']}")
    if not torch.cuda.is_available():
        print("CUDA not available: GPU measurements skipped (CPU-safe checks above ran)")
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
        return
    torch.backends.cudnn.benchmark = True
    report["gpu"] = torch.cuda.get_device_name(0)
    from server.runtime.nvml import NvmlMonitor

    nvml = NvmlMonitor()
    report["nvml"] = {"available": nvml.available, "sample": nvml.sample().__dict__}
    batches = [int(b) for b in args.batches.split(",")]
    for arch in args.archs.split(","):
        try:
            report["rows"] += bench_arch(arch, batches, args.repeats)
        except Exception:  # keep the other measurements
            report["errors"].append(traceback.format_exc())
            print(traceback.format_exc())
    report["nvml_after"] = nvml.sample().__dict__
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    print(
        f"\n{report['gpu']}, torch {torch.__version__}; latency ms (median of {args.repeats}, host->device->host "
        f"included)"
    )
    names = list(VARIANTS)
    print(f"{'arch':>15} {'w':>5} {'b':>3} " + " ".join(f"{n:>12}" for n in names) + "  max rel err fp16/bf16")
    for arch in args.archs.split(","):
        for b in batches:
            for w in models.create(arch).widths:
                cells = {
                    r["variant"]: r for r in report["rows"] if r["arch"] == arch and r["batch"] == b and r["width"] == w
                }
                if len(cells) < len(names):
                    continue
                err = max(cells[n]["rel_err_vs_fp32_eager"] for n in names if "16" in n)
                print(
                    f"{arch:>15} {w:>5.2f} {b:>3d} "
                    + " ".join(f"{cells[n]['latency_ms']:>12.3f}" for n in names)
                    + f"  {err:.2e}"
                )
    print(f"NVML: {report['nvml']} after: {report['nvml_after']}")


if __name__ == "__main__":
    main()
