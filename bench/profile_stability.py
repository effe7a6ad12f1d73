"""How stable is the start-up latency profile's shape from one start to the next?

The policies compare widths by the profile's ratios (is 0.5 worth its extra time over 0.35?). On a
host whose speed drifts for seconds at a time (a VM's neighbours), measuring width after width puts
each width in whatever speed the host had then; ``policies.measure_profile`` measures in rounds over
the whole table and takes each round's speed out. This program profiles S-MobileNet v2 224 (random
weights, ONNX Runtime, one thread, pinned to one core) ``--starts`` times each way, alternating,
and reports each width's batch-1 and batch-8 time over the narrowest width's: mean and standard
deviation across starts, plus each method's profiling seconds. Writes JSON.

    python -m bench.profile_stability --starts 8 --out out/profile_stability
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import models
from bench.common import imagenet_checkpoint
from policies import batch_sizes_up_to, measure_profile
from policies.profile import monotone, time_runs
from server.runtime import Runtime


def width_after_width(run, widths, batch_sizes, warmup: int = 3, repeats: int = 15) -> dict:
    """The previous ``measure_profile``: every (width, batch) timed ``repeats`` times in one go, width after width."""
    table = {}
    for width in widths:
        table[width] = {}
        for batch in batch_sizes:
            table[width][batch] = statistics.median(time_runs(run, width, batch, warmup, repeats))
    return monotone(table)  # as measure_profile did


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.profile_stability", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s_mobilenet_v2")
    parser.add_argument("--starts", type=int, default=8, help="profiles per method")
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/profile_stability"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {args.core})
    net = models.load_checkpoint(imagenet_checkpoint(args.arch)).net
    runtime = Runtime(net, "cpu", "onnxruntime", threads=1)
    batch_sizes = batch_sizes_up_to(8)
    runtime.warm_up(batch_sizes)
    examples = {b: np.zeros((b, *runtime.input_shape), np.float32) for b in batch_sizes}

    def run(width: float, batch: int) -> None:
        runtime.run(width, examples[batch])

    methods = {
        "width after width": lambda: width_after_width(run, runtime.widths, batch_sizes),
        "rounds (measure_profile)": lambda: _rounds(run, runtime.widths, batch_sizes),
    }
    tables: dict[str, list[dict]] = {name: [] for name in methods}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for start in range(args.starts):
        for name, measure in methods.items():
            began = time.perf_counter()
            tables[name].append(measure())
            seconds[name].append(time.perf_counter() - began)
            row = tables[name][-1]
            print(f"start {start + 1} {name:>24}: batch-1 ms " +
                  " ".join(f"{w:g}:{row[w][1] * 1e3:.2f}" for w in runtime.widths), flush=True)
    narrowest = runtime.widths[0]
    report = {"date": time.strftime("%Y-%m-%d"), "arch": args.arch, "starts": args.starts, "methods": {}}
    print(f"\nratio to width {narrowest:g} over {args.starts} starts: mean / standard deviation")
    for name, measured in tables.items():
        ratios = {}
        for width in runtime.widths[1:]:
            for batch in (1, batch_sizes[-1]):
                values = [t[width][batch] / t[narrowest][batch] for t in measured]
                ratios[f"{width:g}/b{batch}"] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values)}
        report["methods"][name] = {
            "ratios": ratios,
            "profiling_s": statistics.median(seconds[name]),
            "tables_ms": [
                {str(w): {str(b): s * 1e3 for b, s in row.items()} for w, row in t.items()} for t in measured
            ],
        }
        print(f"{name:>24} (profiling {statistics.median(seconds[name]):.1f} s): " +
              ", ".join(f"{key} {r['mean']:.2f} / {r['sd']:.3f}" for key, r in ratios.items()))
    (args.out / "profile_stability.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'profile_stability.json'}")


def _rounds(run, widths, batch_sizes) -> dict:
    profile = measure_profile(run, widths, batch_sizes)
    return {w: {b: profile.predict(w, b) for b in batch_sizes} for w in widths}


if __name__ == "__main__":
    main()
