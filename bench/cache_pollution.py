"""What an inference pays for what runs beside it on its core: batch-1 ONNX Runtime of one width
on one thread, pinned, with its input the same array every time (hot), one of 64 distinct inputs in
turn (cold: the 38 MB a queue of 64 holds), batches of 8 made by ``np.concatenate`` of those (as the
worker does), and the hot input after ``--evict-mb`` of other memory was written between runs (what
an event loop's work on the same core does to the caches; its own time is subtracted).

    python -m bench.cache_pollution --out out/cache_pollution [--width 0.35] [--evict-mb 1,4,32]
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

from bench.common import imagenet_checkpoint
from bench.peers import one_thread_session


def per_sample_ms(run, count: int, samples_per_call: int = 1) -> float:
    began = time.perf_counter()
    for i in range(count):
        run(i)
    return (time.perf_counter() - began) / (count * samples_per_call) * 1e3


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.cache_pollution", description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.35)
    parser.add_argument("--evict-mb", default="1,4,32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/cache_pollution"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = exported(args.out, args.width)
    os.sched_setaffinity(0, {args.core})
    s = one_thread_session(onnx_path)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(64)]

    def infer(x):
        return s.run(None, {"input": x})

    cases = {
        "hot": lambda n: per_sample_ms(lambda i: infer(inputs[0]), n),
        "cold": lambda n: per_sample_ms(lambda i: infer(inputs[i % 64]), n),
        "batch8_concatenated": lambda n: per_sample_ms(
            lambda i: infer(np.concatenate(inputs[(8 * i) % 64:(8 * i) % 64 + 8])), max(1, n // 8), 8),
    }
    for mb in (int(x) for x in args.evict_mb.split(",")):
        junk = np.ones(mb * 1024 * 1024 // 4, np.float32)

        def evicted(n, junk=junk):
            def touch(_i):
                junk[::16] += 1.0  # one write per cache line
            own = per_sample_ms(touch, n)
            return per_sample_ms(lambda i: (touch(i), infer(inputs[0])), n) - own
        cases[f"hot_after_{mb}MB_written"] = evicted
    for case in cases.values():
        case(10)  # warm
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, case in cases.items():
            results[name].append(case(100))
    report = {"width": args.width, "rounds": args.rounds,
              "per_sample_ms": {name: statistics.median(v) for name, v in results.items()}, "runs": results}
    for name, value in report["per_sample_ms"].items():
        print(f"{name:>28}: {value:.3f} ms per sample (median of {args.rounds})")
    (args.out / "cache_pollution.json").write_text(json.dumps(report, indent=2))


def exported(folder: Path, width: float) -> Path:
    """S-MobileNet v2 224 (random weights) at ``width``, exported once into ``folder``."""
    path = folder / f"{width!r}.onnx"
    if not path.exists():
        import models
        from server.runtime.onnx_export import export_switch_onnx

        net = models.load_checkpoint(imagenet_checkpoint("s_mobilenet_v2", folder)).net
        path.write_bytes(export_switch_onnx(net, width))
    return path


if __name__ == "__main__":
    main()
