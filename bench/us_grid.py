"""A universally slimmable model at a 14-width grid vs the same model at 4 widths.

1. Train ``us_convnet6`` on digits-hard (the project's 16x16 digits over distractors and noise) with
   the sandwich rule and in-place distillation, and calibrate BN statistics on the grid
   0.35:1.0:0.05 (or take ``--checkpoint``, a calibrated universally slimmable checkpoint).
2. Held-out top-1 of every grid width.
3. One latency profile of all grid widths as ``serve`` runs them (ONNX Runtime, ``--threads``); the
   4-width model (0.35/0.5/0.75/1.0) uses the same measurements at its widths.
4. ``simulate`` (serve's scheduler and defaults) at Poisson loads 0.5x-3x of the widest width's
   capacity, budget 3x its batch-1 latency, for each policy: attainment, and mean expected top-1
   per request *sent* (a late or refused request counts 0: on-time share x mean top-1 of answers).

    python -m bench.us_grid --out out/us_grid [--epochs 6] [--checkpoint us.safetensors]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import models
from models.training import TrainConfig, evaluate, load_dataset, train
from models.widths import width_grid
from policies import LatencyProfile, batch_sizes_up_to, make_policy
from bench.policy_sim import capacity
from policies.simulator import arrival_times, simulate
from server.runtime import Runtime, profile_runtime
from server.settings import Settings

GRID = width_grid(0.35, 1.0, 0.05)
FOUR = (0.35, 0.5, 0.75, 1.0)
LOADS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
POLICIES = ("max-width", "slack")


def trained_checkpoint(args) -> Path:
    if args.checkpoint:
        return args.checkpoint
    path = args.out / "us_convnet6_digits_hard.safetensors"
    data = load_dataset("digits-hard", 16)
    torch.manual_seed(args.seed)
    net = models.create("us_convnet6", widths=GRID, width_range=(0.35, 1.0), num_classes=data.num_classes)
    began = time.monotonic()
    result = train(net, data, TrainConfig(epochs=args.epochs, lr=0.05, inplace_distill=True, seed=args.seed,
                                          progress=False))
    print(f"trained us_convnet6 on digits-hard: {args.epochs} epochs in {time.monotonic() - began:.0f} s")
    models.save_checkpoint(net.cpu().eval(), path, {
        "mean": list(data.mean), "std": list(data.std), "labels": list(data.labels), "accuracy": result.val_top1,
        "dataset": data.name, "accuracy_source": "bench.us_grid: held-out split of digits-hard"})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/us_grid"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the profile")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--duration", type=float, default=30.0, help="simulated seconds per point")
    parser.add_argument("--noise", type=float, default=0.05)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    net = models.load_checkpoint(trained_checkpoint(args)).with_widths(GRID)
    data = load_dataset("digits-hard", net.input_size, net.in_channels, mean=net.metadata.get("mean"),
                        std=net.metadata.get("std"))
    top1 = {w: r["top1"] for w, r in evaluate(net, data.x_val, data.y_val).items()}
    print("held-out top-1 per width (digits-hard):")
    print("  " + "  ".join(f"{w:g}:{a:.3f}" for w, a in top1.items()))

    sizes = batch_sizes_up_to(8)
    runtime = Runtime(net, "cpu", "onnxruntime", args.threads)
    runtime.warm_up(sizes)
    profile = profile_runtime(runtime, sizes, repeats=args.repeats)
    profile.save(args.out / "profile.json")
    four = LatencyProfile({w: {int(b): s for b, s in row.items()} for w, row in profile.as_dict()["widths"].items()
                           if float(w) in FOUR})
    budget = 3 * profile.predict(1.0, 1)
    cap = capacity(profile, 1.0, 8)
    print("batch-1 ms: " + ", ".join(f"{w:g}:{profile.predict(w, 1) * 1e3:.3f}" for w in GRID))
    print(f"budget {budget * 1e3:.3f} ms; widest capacity {cap:.0f} req/s")

    rows = []
    config = Settings().scheduler_config()  # serve's defaults
    for load in LOADS:
        arrivals = arrival_times("poisson", load * cap, args.duration, seed=7)
        for policy in POLICIES:
            for name, prof, widths in (("14 widths", profile, GRID), ("4 widths", four, FOUR)):
                acc = {w: top1[w] for w in widths}
                result = simulate(prof, make_policy(policy, widths), arrivals, budget, acc, config, args.noise, seed=7)
                per_sent = (result.mean_accuracy or 0.0) * result.attainment
                rows.append({"load": load, "policy": policy, "grid": name, "attainment": result.attainment,
                             "accuracy_per_sent": per_sent, "mean_accuracy_served": result.mean_accuracy,
                             "width_mix": result.width_mix})
    print(f"\n{'load':>5} {'policy':>10} | {'14 widths: att / top-1 per sent':>32} | {'4 widths: att / top-1 per sent':>31}")
    for load in LOADS:
        for policy in POLICIES:
            cell = {r["grid"]: r for r in rows if r["load"] == load and r["policy"] == policy}
            a, b = cell["14 widths"], cell["4 widths"]
            print(f"{load:>4}x {policy:>10} | {a['attainment']:>15.3f} / {a['accuracy_per_sent']:.4f}       "
                  f"| {b['attainment']:>14.3f} / {b['accuracy_per_sent']:.4f}")
    report = {"top1": {str(w): a for w, a in top1.items()}, "budget_ms": budget * 1e3, "capacity_rps": cap,
              "profile": profile.as_dict(), "rows": rows}
    (args.out / "us_grid.json").write_text(json.dumps(report, indent=1))
    plot(rows, top1, args.out / "us_grid.png")
    print(f"\nwrote {args.out / 'us_grid.json'} and {args.out / 'us_grid.png'}")


def plot(rows: list[dict], top1: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4.2))
    ax0.plot(list(top1), list(top1.values()), marker="o", label="grid (0.05)")
    ax0.plot(FOUR, [top1[w] for w in FOUR], "s", markersize=9, mfc="none", label="4 widths")
    ax0.set(xlabel="width", ylabel="held-out top-1", title="us_convnet6 on digits-hard")
    ax0.legend()
    for policy, style in zip(POLICIES, ("-", ":")):
        for grid, color in (("14 widths", "C0"), ("4 widths", "C1")):
            pts = [r for r in rows if r["policy"] == policy and r["grid"] == grid]
            ax1.plot([r["load"] for r in pts], [r["attainment"] for r in pts], style, color=color, marker="o",
                     label=f"{grid}, {policy}")
            ax2.plot([r["load"] for r in pts], [r["accuracy_per_sent"] for r in pts], style, color=color, marker="o",
                     label=f"{grid}, {policy}")
    ax1.set(xlabel="load (x widest capacity)", ylabel="attainment (simulated)", ylim=(0, 1.02))
    ax1.axhline(0.99, color="grey", lw=0.5)
    ax2.set(xlabel="load (x widest capacity)", ylabel="mean top-1 per request sent")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
