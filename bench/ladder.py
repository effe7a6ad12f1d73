"""Where each switch's time goes: ONNX Runtime's per-operator profile, grouped, per width.

The width ladder t(narrowest)/t(widest) is far above the MACs ratio on CPU;
this shows why. For every switch as served (BN folded, channels padded) it
profiles batch-1 runs and groups kernel time by operator kind and by feature
map size, with the MACs each group computes and the rate it reaches.

    python -m bench.ladder --out out/ladder [--arch s_mobilenet_v2] [--runs 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import models
from server.runtime.cpu_features import nchwc_block
from server.runtime.onnx_export import export_switch_onnx
from server.runtime.ort import ort_session_options, use_global_thread_pool


def op_kind(op: str, shapes: list[list[int]]) -> str:
    if op == "Conv" and len(shapes) > 1 and len(shapes[1]) == 4:
        out_ch, in_per_group, kh, kw = shapes[1]
        if in_per_group == 1 and kh > 1:
            return "depthwise conv"
        return "1x1 conv" if kh == kw == 1 else f"{kh}x{kw} conv"
    if op in ("Gemm", "MatMul"):
        return "classifier (Gemm)"
    return "layout, pooling, other"


def macs(op: str, shapes: list[list[int]], out_shape: list[int]) -> int:
    if op == "Conv" and len(shapes) > 1 and len(out_shape) == 4:
        out_ch, in_per_group, kh, kw = shapes[1]
        return out_ch * in_per_group * kh * kw * out_shape[0] * out_shape[2] * out_shape[3]
    if op in ("Gemm", "MatMul") and len(shapes) > 1:
        return math.prod(shapes[0]) * shapes[1][0]
    return 0


def _dims(entries) -> list[list[int]]:
    return [list(next(iter(e.values()))) for e in entries or []]


def profile_switch(model: bytes, shape: tuple[int, ...], runs: int) -> dict:
    """Median kernel microseconds per node (with its kind, size and MACs) and the median wall time per run."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    plain = ort.InferenceSession(model, ort_session_options(), providers=["CPUExecutionProvider"])
    walls = []
    for i in range(runs + 20):
        start = time.perf_counter()
        plain.run(None, {"input": x})
        if i >= 20:
            walls.append((time.perf_counter() - start) * 1e6)
    options = ort_session_options()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {"input": x})
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        args = event["args"]
        node = nodes.setdefault(event["name"], {"op": args["op_name"], "durations": []})
        node["durations"].append(event["dur"])
        node["inputs"], node["output"] = (
            _dims(args.get("input_type_shape")),
            (_dims(args.get("output_type_shape")) or [[]])[0],
        )
    rows = []
    for node in nodes.values():
        out = node["output"]
        rows.append({
            "kind": op_kind(node["op"], node["inputs"]),
            "size": f"{out[2]}x{out[3]}" if len(out) == 4 else "-",
            "us": statistics.median(node["durations"]),
            "macs": macs(node["op"], node["inputs"], out),
        })
    return {"wall_us": statistics.median(walls), "nodes": rows}


def summarize(rows: list[dict], key: str) -> dict[str, dict]:
    groups: dict[str, dict] = collections.defaultdict(lambda: {"ops": 0, "us": 0.0, "macs": 0})
    for row in rows:
        g = groups[row[key]]
        g["ops"] += 1
        g["us"] += row["us"]
        g["macs"] += row["macs"]
    return dict(groups)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.ladder", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s_mobilenet_v2")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("out/ladder"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    use_global_thread_pool(args.threads)
    net = models.create(args.arch, input_size=args.input_size)
    shape = (net.in_channels, args.input_size, args.input_size)
    block = nchwc_block()
    report = {"arch": args.arch, "threads": args.threads, "channel_block": block, "date": time.strftime("%Y-%m-%d"),
              "widths": {}}
    for width in net.widths:
        result = profile_switch(export_switch_onnx(net, width, block), shape, args.runs)
        kernel_us = sum(r["us"] for r in result["nodes"])
        report["widths"][str(width)] = {
            "wall_us": result["wall_us"], "kernel_us": kernel_us, "ops": len(result["nodes"]),
            "macs": sum(r["macs"] for r in result["nodes"]),
            "by_kind": summarize(result["nodes"], "kind"), "by_size": summarize(result["nodes"], "size"),
            "ops_under_20us": sum(r["us"] < 20 for r in result["nodes"]),
        }
    (args.out / "ladder.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"wrote {args.out / 'ladder.json'}")


def print_report(report: dict) -> None:
    widths = list(report["widths"])
    w0, w1 = report["widths"][widths[0]], report["widths"][widths[-1]]
    print(f"{report['arch']} batch 1, {report['threads']} threads, channels padded to {report['channel_block']}; "
          "kernel time from ORT's profiler (median per node), wall time from unprofiled runs")
    print(f"{'width':>6} {'wall ms':>8} {'kernels ms':>10} {'ops':>4} {'GMACs':>6} {'GMAC/s':>7} {'ops < 20 us':>11}")
    for width, w in report["widths"].items():
        print(
            f"{width:>6} {w['wall_us'] / 1e3:>8.3f} {w['kernel_us'] / 1e3:>10.3f} {w['ops']:>4} "
            f"{w['macs'] / 1e9:>6.3f} "
            f"{w['macs'] / w['kernel_us'] / 1e3:>7.1f} {w['ops_under_20us']:>11}"
        )
    print(f"ladder: wall {w0['wall_us'] / w1['wall_us']:.3f}, kernels {w0['kernel_us'] / w1['kernel_us']:.3f}, "
          f"MACs {w0['macs'] / w1['macs']:.3f}")
    for key, title in (("by_kind", "operator kind"), ("by_size", "output feature map")):
        names = sorted({n for w in report["widths"].values() for n in w[key]},
                       key=lambda n: -report["widths"][widths[-1]][key].get(n, {"us": 0})["us"])
        print(f"\nkernel ms (GMAC/s) by {title}, narrowest vs widest:")
        for name in names:
            cells = []
            for w in (w0, w1):
                g = w[key].get(name)
                rate = f"{g['macs'] / g['us'] / 1e3:6.1f}" if g and g["macs"] else "     -"
                cells.append(f"{g['us'] / 1e3 if g else 0:7.3f} ({rate})")
            ratio = (w0[key].get(name, {"us": 0})["us"] / w1[key][name]["us"]) if name in w1[key] else float("nan")
            print(f"  {name:>24}: {cells[0]}  vs  {cells[1]}   ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
