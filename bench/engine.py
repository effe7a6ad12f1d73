"""CPU engine benchmark: the served runtime vs a raw ONNX Runtime session vs PyTorch, per width.

Variants are interleaved in short blocks (shuffled every round, first calls of
each block discarded) and repeated, so machine noise hits all of them alike;
the table quotes medians and ratios from the same run. The raw sessions use
the same ORT settings and process-wide thread pool as the served ones, so the
ratio isolates what the runtime adds (tensor conversion, dispatch).

    python -m bench.engine --out out/engine [--arch s_mobilenet_v2] [--repeats 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import models
from server.runtime import Runtime
from server.runtime.cpu_features import nchwc_block
from server.runtime.onnx_export import export_switch_onnx
from server.runtime.ort import ort_session_options, shared_initializers

BLOCK, DISCARD = 5, 2  # calls per block; the first ones pay for switching from another session


def raw_session(model: bytes):
    """A bare ONNX Runtime session with the options the runtime uses (the reference to match)."""
    import onnxruntime as ort

    return ort.InferenceSession(model, ort_session_options(), providers=["CPUExecutionProvider"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s_mobilenet_v2")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("out/engine"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    net = models.create(args.arch, input_size=args.input_size)
    shape = (net.in_channels, args.input_size, args.input_size)
    runtime = Runtime(net, "cpu", "onnxruntime", args.threads)
    variants = {}
    block = nchwc_block()
    for width in net.widths:
        plain = raw_session(export_switch_onnx(net, width))
        padded = raw_session(export_switch_onnx(net, width, block))
        folded_cl = net.switch(width, fold_bn=True).to(memory_format=torch.channels_last)
        variants[width] = {
            "served": lambda x, w=width: runtime.run(w, x.numpy()),
            "raw_ort": lambda x, s=plain: s.run(None, {"input": x.numpy()}),
            "raw_ort_padded": lambda x, s=padded: s.run(None, {"input": x.numpy()}),
            "torch_eager": lambda x, w=width: net(x, width=w),
            "torch_folded_cl": lambda x, m=folded_cl: m(x.contiguous(memory_format=torch.channels_last)),
        }
    batches = [int(b) for b in args.batches.split(",")]
    inputs = {b: torch.randn(b, *shape) for b in batches}
    times: dict[tuple, list[float]] = {}
    calls = [(w, b, name) for w in net.widths for b in batches for name in variants[w]]
    with torch.inference_mode():
        for w, b, name in calls:  # warm-up
            for _ in range(3):
                variants[w][name](inputs[b])
        rng = random.Random(0)
        for _ in range(args.repeats):
            rng.shuffle(calls)
            for w, b, name in calls:
                for i in range(BLOCK):
                    start = time.perf_counter()
                    variants[w][name](inputs[b])
                    if i >= DISCARD:
                        times.setdefault((w, b, name), []).append((time.perf_counter() - start) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}

    names = list(variants[net.widths[0]])
    rows = []
    print(f"{args.arch} @ {args.input_size}px, {args.threads} threads, median ms of {args.repeats * (BLOCK - DISCARD)} "
          f"interleaved runs; raw_ort: plain export, raw_ort_padded and served: channels padded to {block}")
    print(
        f"{'width':>6} {'batch':>5} " + " ".join(f"{n:>16}" for n in names) + f" {'served/raw':>11} {'/raw_padded':>11}"
    )
    for b in batches:
        for w in net.widths:
            row = {"width": w, "batch": b, **{n: med[(w, b, n)] for n in names}}
            row["served_over_raw"] = row["served"] / row["raw_ort"]
            row["served_over_raw_padded"] = row["served"] / row["raw_ort_padded"]
            rows.append(row)
            print(f"{w:>6.2f} {b:>5d} " + " ".join(f"{row[n]:>16.3f}" for n in names)
                  + f" {row['served_over_raw']:>11.3f} {row['served_over_raw_padded']:>11.3f}")
    ladder = {n: med[(net.widths[0], 1, n)] / med[(net.widths[-1], 1, n)] for n in names}
    print("width ladder t(narrowest)/t(widest), batch 1: " + ", ".join(f"{n} {v:.3f}" for n, v in ladder.items()))

    memory = memory_report(net, block)
    print(
        f"memory (weight bytes): all switches resident {memory['served_bytes'] / 1e6:.1f} MB = "
        f"{memory['served_ratio']:.2f}x "
        f"the widest switch alone ({memory['widest_bytes'] / 1e6:.1f} MB); without sharing identical initializers "
        f"{memory['unshared_ratio']:.2f}x; shared-weight torch path {memory['torch_shared_ratio']:.2f}x"
    )
    report = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
              "arch": args.arch, "threads": args.threads, "repeats": args.repeats, "channel_block": block, "rows": rows,
              "ladder": ladder,
              "memory": memory}
    (args.out / "engine.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'engine.json'}")


def memory_report(net, block) -> dict:
    """Weight bytes of every switch as served (identical initializers stored once) vs the widest switch alone."""
    import onnx
    from onnx import numpy_helper

    models_by_width = {w: export_switch_onnx(net, w, block) for w in net.widths}
    shared, _ = shared_initializers(models_by_width)
    per_switch, served, counted = {}, 0, set()
    for width, model in models_by_width.items():
        inits = onnx.load_from_string(model).graph.initializer
        per_switch[width] = sum(numpy_helper.to_array(t).nbytes for t in inits)
        for t in inits:
            if t.name in shared[width]:
                key = id(shared[width][t.name])
                if key in counted:
                    continue
                counted.add(key)
            served += numpy_helper.to_array(t).nbytes
    widest = per_switch[net.widths[-1]]
    torch_shared = sum(p.numel() * p.element_size() for p in net.parameters())
    return {
        "per_switch_bytes": {str(w): b for w, b in per_switch.items()},
        "widest_bytes": widest,
        "served_bytes": served,
        "served_ratio": served / widest,
        "unshared_ratio": sum(per_switch.values()) / widest,
        "torch_shared_bytes": torch_shared,
        "torch_shared_ratio": torch_shared / widest,
        "note": "ONNX initializer bytes; ORT's pre-packed weight copies are not counted",
    }


if __name__ == "__main__":
    np.random.seed(0)
    main()
