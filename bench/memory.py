"""Resident memory of a served width list: what loading and running every width adds to the process.

Each configuration runs in a fresh interpreter: it builds the net (random weights), imports ONNX
Runtime and sets up its process-wide pool and arena, reads VmRSS, then builds the serving
:class:`~server.runtime.Runtime` (one ONNX Runtime session per width, BN folded), reads VmRSS
again, runs a batch of every ``--batches`` size at every width (what warm-up and profiling do
before ``/readyz``), and reads it a third time. Growth is compared with the widest switch's own
(folded) weight bytes: "resident within 2x the widest switch" means a ratio <= 2.

The heap freed on the way is given back (``malloc_trim``) before each reading, as the server does
before ``/readyz``. Each configuration runs twice, as a server starts: cold (exporting every switch into a fresh
start-up cache) and warm (a second interpreter loading the switches and shared initializers from
that cache, as a restart does: no export heap).

    python -m bench.memory --out out/memory [--batches 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from bench.common import REPO

# (architecture, served widths, serve's --weights): a 4-switch S-Net, and a US-Net at 4 widths and on a
# 0.05 grid, each width its own folded copy (ONNX Runtime) or all widths on one copy (torch).
CONFIGURATIONS = (
    ("s_mobilenet_v2", "0.35,0.5,0.75,1.0", "per-width"),
    ("us_mobilenet_v2", "0.35,0.5,0.75,1.0", "per-width"),
    ("us_mobilenet_v2", "0.35:1.0:0.05", "per-width"),
    ("us_convnet6", "0.35,0.5,0.75,1.0", "per-width"),
    ("us_convnet6", "0.35:1.0:0.05", "per-width"),
    ("s_mobilenet_v2", "0.35,0.5,0.75,1.0", "shared"),
    ("us_mobilenet_v2", "0.35:1.0:0.05", "shared"),
)


def resident_mb(pid: int | str = "self") -> float:
    """A process's resident memory (VmRSS) in MB; this process by default."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def measure(arch: str, widths_spec: str, batches: list[int], cache_dir: Path, weights: str = "per-width") -> dict:
    """One configuration, in this process (run it in a fresh one), with the start-up cache in ``cache_dir``.

    With ``weights == "shared"`` the runtime adds no weights of its own: it runs the net itself, so the
    net's tensor bytes (all widths' weights once, every width's BN) count as loaded, on top of what
    the runtime and the batches add."""
    import numpy as np
    import torch

    import models
    from models.widths import parse_widths
    from server.engine.startup_cache import StartupCache
    from server.runtime import Runtime, return_freed_heap
    from server.runtime.ort import use_global_thread_pool

    widths = parse_widths(widths_spec)
    extra = {"calibrated": widths} if arch.startswith("us_") else {}
    torch.manual_seed(0)  # the same weights in the warm process: the same cache key
    net = models.create(arch, widths=widths, **extra).eval()
    widest = net.switch(max(widths), fold_bn=True)
    widest_mb = sum(t.numel() * t.element_size() for t in widest.state_dict().values()) / 2**20
    del widest
    if weights == "shared":
        return _measure_shared(net, arch, widths_spec, widths, batches, widest_mb)
    use_global_thread_pool(1)
    # One-time costs (the exporter's and ORT's code and registries) are not per width: pay them on a
    # throw-away tiny model first.
    tiny = models.create("us_convnet6", widths=(1.0,), calibrated=(1.0,)).eval()
    throwaway = Runtime(tiny, device="cpu", backend="onnxruntime", threads=1)
    throwaway.run(1.0, np.zeros((1, *throwaway.input_shape), np.float32))
    del throwaway
    cache = StartupCache(cache_dir, net)
    warm = any(cache_dir.glob("export-*/*.onnx"))
    before = resident_mb()
    runtime = Runtime(net, device="cpu", backend="onnxruntime", threads=1, cache=cache)
    return_freed_heap()  # as the server does before /readyz
    loaded = resident_mb()
    for width in widths:
        for b in batches:
            runtime.run(width, np.zeros((b, *runtime.input_shape), np.float32))
    return_freed_heap()
    ran = resident_mb()
    return {"arch": arch, "widths": widths_spec, "start": "warm" if warm else "cold", "n_widths": len(widths),
            "input_size": net.input_size,
            "widest_switch_mb": widest_mb, "loaded_mb": loaded - before, "after_batches_mb": ran - before,
            "loaded_ratio": (loaded - before) / widest_mb, "after_batches_ratio": (ran - before) / widest_mb,
            "weights": "per-width"}


def _measure_shared(net, arch: str, widths_spec: str, widths, batches: list[int], widest_mb: float) -> dict:
    import numpy as np
    import torch

    from server.runtime import Runtime, return_freed_heap

    net_mb = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]) / 2**20
    # torch's one-time costs (kernels, allocator pools) on a throw-away batch of the widest width first
    with torch.inference_mode():
        net(torch.zeros(1, net.in_channels, net.input_size, net.input_size), max(widths))
    return_freed_heap()
    before = resident_mb()
    runtime = Runtime(net, device="cpu", backend="torch", threads=1, weights="shared")
    return_freed_heap()
    loaded = resident_mb() - before + net_mb
    for width in widths:
        for b in batches:
            runtime.run(width, np.zeros((b, *runtime.input_shape), np.float32))
    return_freed_heap()
    ran = resident_mb() - before + net_mb
    return {"arch": arch, "widths": widths_spec, "start": "-", "n_widths": len(widths), "input_size": net.input_size,
            "widest_switch_mb": widest_mb, "net_mb": net_mb, "loaded_mb": loaded, "after_batches_mb": ran,
            "loaded_ratio": loaded / widest_mb, "after_batches_ratio": ran / widest_mb, "weights": "shared"}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,2,4,8", help="batch sizes run at every width (default 1,2,4,8)")
    parser.add_argument("--out", type=Path, default=Path("out/memory"))
    parser.add_argument("--one", nargs=4, metavar=("ARCH", "WIDTHS", "CACHE", "WEIGHTS"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", choices=["per-width", "shared", "both"], default="both",
                        help="which configurations to run (serve's --weights)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.one:
        arch, widths, cache, weights = args.one
        print(json.dumps(measure(arch, widths, batches, Path(cache), weights)))
        return
    rows = []
    print(
        f"{'arch':>16} {'widths':>18} {'weights':>9} {'start':>5} {'n':>3} {'widest MB':>9} {'loaded MB':>9} {'x':>5} "
        f"{'after batches MB':>16} {'x':>5}"
    )
    for arch, widths, weights in CONFIGURATIONS:
        if args.weights not in ("both", weights):
            continue
        with tempfile.TemporaryDirectory() as cache:
            for _ in ("cold", "warm") if weights == "per-width" else ("-",):  # shared weights cache no exports
                done = subprocess.run([sys.executable, "-m", "bench.memory", "--one", arch, widths, cache, weights,
                                       "--batches", args.batches], cwd=REPO, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"{arch:>16} {widths:>18} {weights:>9} {row['start']:>5} {row['n_widths']:>3} "
                    f"{row['widest_switch_mb']:>9.1f} "
                    f"{row['loaded_mb']:>9.1f} {row['loaded_ratio']:>5.1f} {row['after_batches_mb']:>16.1f} "
                    f"{row['after_batches_ratio']:>5.1f}"
                )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "batches": batches,
                                                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
