"""A universally slimmable model at a 14-width grid vs the same model at 4 widths.

1. Train ``us_convnet6`` on digits-hard (the project's 16x16 digits over distractors and noise) with
   the sandwich rule and in-place distillation, and calibrate BN statistics on the grid
   0.35:1.0:0.05 (or take ``--checkpoint``, a calibrated universally slimmable checkpoint).
2. Held-out top-1 of every grid width.
3. One latency profile of all grid widths as ``serve`` runs them (ONNX Runtime, ``--threads``); the
   4-width model (0.35/0.5/0.75/1.0) uses the same measurements at its widths.
4. ``simulate`` (serve's scheduler and defaults) at Poisson loads 0.5x-3x of the widest width's
   capacity, for each budget (``--budgets``, multiples of the widest batch-1 latency) and policy:
   attainment, and mean expected top-1 per request *sent* (a late or refused request counts 0:
   on-time share x mean top-1 of answers).
5. With ``--live``: the same loads, budgets and policies against ``widthwise serve --widths``, a grid
   server and a 4-width server up together, pinned to core 0 with one ORT thread and no keep-warm,
   each point run on both in turn (``--live-rounds``, alternating order), this client on core 1, v2
   binary tensors.

``--official us_mobilenet_v2`` takes the paper-size model instead (224x224, random weights, every
slot marked calibrated) with the official model zoo's ImageNet top-1 per width as its accuracy: a
curve that keeps rising with width, where the digits models' is flat.

    python -m bench.us_grid --out out/us_grid [--epochs 6] [--checkpoint us.safetensors]
    python -m bench.us_grid --official us_mobilenet_v2 --budgets 3,0.9 --live --out out/us_grid_official
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

import httpx2
import torch

import models
from bench import common
from bench.load import describe, measure_point, server_device_speed, v2_request
from bench.policy_sim import capacity
from models.checkpoint import OFFICIAL_TOP1
from models.rebuild import with_widths
from models.training import TrainConfig, evaluate, load_dataset, train
from models.widths import width_grid
from policies import LatencyProfile, batch_sizes_up_to, make_policy
from policies.simulator import arrival_times, simulate
from server.runtime import Runtime, profile_runtime
from server.settings import Settings
from server.testing import live_server

GRID = width_grid(0.35, 1.0, 0.05)
FOUR = (0.35, 0.5, 0.75, 1.0)
LOADS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
POLICIES = ("max-width", "slack")


def official_checkpoint(args) -> Path:
    """``args.official`` at 224x224 with random weights, every slot calibrated, the model zoo's top-1."""
    path = args.out / f"{args.official}_random.safetensors"
    net = models.create(args.official)
    net.calibrated = net.widths
    models.save_checkpoint(net.eval(), path, models.ModelCard.for_net(
        net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), accuracy=OFFICIAL_TOP1[args.official],
        accuracy_source="official model zoo (ImageNet top-1); random weights for timing"))
    return path


def trained_checkpoint(args) -> Path:
    if args.official:
        return official_checkpoint(args)
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
    models.save_checkpoint(net.cpu().eval(), path, models.ModelCard.for_net(
        net, mean=data.mean, std=data.std, labels=data.labels, accuracy=result.val_top1,
        accuracy_source="bench.us_grid: held-out split of digits-hard", extra={"dataset": data.name}))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.us_grid", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/us_grid"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the profile")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--duration", type=float, default=30.0, help="simulated seconds per point")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument(
        "--request-cpu-ms",
        type=float,
        default=0.0,
        help="simulate a server whose own per-request CPU (HTTP, parsing, the reply) shares the model's "
        "core, as serve measures it (/v1/models request_cpu_ms; ~0.8-0.9 ms pinned here); 0: the "
        "model alone",
    )
    parser.add_argument("--official", choices=sorted(a for a in OFFICIAL_TOP1 if a.startswith("us_")), default=None,
                        help="the paper-size US model with the official model zoo's accuracy (no training)")
    parser.add_argument("--budgets", default="3", help="budgets as multiples of the widest batch-1 latency (default 3)")
    parser.add_argument("--loads", default=",".join(f"{x:g}" for x in LOADS))
    parser.add_argument("--profile", type=Path, default=None, help="reuse a profile.json this program saved")
    parser.add_argument("--live", action="store_true", help="also run the loads against live servers (pinned)")
    parser.add_argument("--live-duration", type=float, default=8.0, help="seconds per live point")
    parser.add_argument("--live-rounds", type=int, default=2,
                        help="live points per (budget, load, policy, width list), the two lists alternating")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    checkpoint = trained_checkpoint(args)
    loaded = models.load_checkpoint(checkpoint)
    net = with_widths(loaded.net, GRID)
    if args.official:
        top1 = {w: OFFICIAL_TOP1[args.official][w] for w in GRID}
        print(f"{args.official} top-1 per width (official model zoo, ImageNet):")
    else:
        spec = loaded.card.input
        data = load_dataset("digits-hard", spec.size, spec.channels, mean=spec.mean, std=spec.std)
        top1 = {w: r["top1"] for w, r in evaluate(net, data.x_val, data.y_val).items()}
        print("held-out top-1 per width (digits-hard):")
    print("  " + "  ".join(f"{w:g}:{a:.3f}" for w, a in top1.items()))

    if args.profile:  # a profile this program saved before: compare policies on the same measurements
        profile = LatencyProfile.load(args.profile)
    else:
        sizes = batch_sizes_up_to(8)
        runtime = Runtime(net, "cpu", "onnxruntime", args.threads)
        runtime.warm_up(sizes)
        profile = profile_runtime(runtime, sizes, repeats=args.repeats)
        profile.save(args.out / "profile.json")
    four = profile.at_widths(FOUR)
    widest_b1 = profile.predict(1.0, 1)
    budgets = [float(b) * widest_b1 for b in args.budgets.split(",")]
    loads = [float(x) for x in args.loads.split(",")]
    cap = capacity(profile, 1.0, 8)
    print("batch-1 ms: " + ", ".join(f"{w:g}:{profile.predict(w, 1) * 1e3:.3f}" for w in GRID))
    print(f"budgets {', '.join(f'{b * 1e3:.3f}' for b in budgets)} ms; widest capacity {cap:.0f} req/s")

    rows = []
    config = Settings().scheduler_config()  # serve's defaults
    for budget in budgets:
        for load in loads:
            arrivals = arrival_times("poisson", load * cap, args.duration, seed=7)
            for policy in POLICIES:
                for name, prof, widths in (("14 widths", profile, GRID), ("4 widths", four, FOUR)):
                    acc = {w: top1[w] for w in widths}
                    result = simulate(prof, make_policy(policy, widths, acc), arrivals, budget, acc, config, args.noise,
                                      seed=7, request_cpu_s=args.request_cpu_ms / 1e3)
                    per_sent = (result.mean_accuracy or 0.0) * result.attainment
                    rows.append({"mode": "simulated", "budget_ms": budget * 1e3, "load": load, "policy": policy,
                                 "grid": name, "attainment": result.attainment, "accuracy_per_sent": per_sent,
                                 "mean_accuracy_served": result.mean_accuracy, "width_mix": result.width_mix})
    rounds = []
    if args.live:
        rounds = live_rows(args, checkpoint, profile, budgets, loads, cap)
        rows += mean_over_rounds(rounds)
    print_table(rows, budgets, loads)
    report = {"top1": {str(w): a for w, a in top1.items()}, "budgets_ms": [b * 1e3 for b in budgets],
              "capacity_rps": cap, "profile": profile.as_dict(), "rows": rows, "live_rounds": rounds,
              "model": args.official or str(checkpoint), "request_cpu_ms": args.request_cpu_ms}
    (args.out / "us_grid.json").write_text(json.dumps(report, indent=1))
    plot(rows, top1, budgets, args.out / "us_grid.png", args.official or "us model on digits-hard")
    print(f"\nwrote {args.out / 'us_grid.json'} and {args.out / 'us_grid.png'}")


def live_rows(args, checkpoint: Path, profile: LatencyProfile, budgets: list[float], loads: list[float],
              cap: float) -> list[dict]:
    """Per policy, a live server of each width list, both up at once and pinned to the same core; every
    (budget, load) runs on one and then the other, ``--live-rounds`` times in alternating order, so
    that each pair of points meets the same minute of this host's drifting speed (run one list's
    points after the other's and the VM's slow spells land on one
    side). Rows carry their round; :func:`mean_over_rounds` gives the table's cells."""
    net = models.load_checkpoint(checkpoint).net
    path, body, headers = v2_request(size=net.input_size)
    os.sched_setaffinity(0, {1})
    rows = []
    grids = (("14 widths", "0.35:1.0:0.05"), ("4 widths", ",".join(f"{w:g}" for w in FOUR)))
    for name, _ in grids:
        (args.out / f"live_profile_{name.split()[0]}_widths.json").unlink(missing_ok=True)
    for policy in POLICIES:
        with contextlib.ExitStack() as servers:
            urls = {}
            for name, widths in grids:
                saved = args.out / f"live_profile_{name.split()[0]}_widths.json"
                # the first server of a width list measures its profile, the second reuses it
                source = ["--profile", str(saved)] if saved.exists() else ["--save-profile", str(saved)]
                # no keep-warm: the idle server's would take 5% of the core from the one under load
                urls[name] = servers.enter_context(live_server(
                    "--checkpoint", str(checkpoint), "--model-name", "v2", "--widths", widths, "--threads", "1",
                    "--max-batch-size", "8", "--policy", policy, "--keep-warm-ms", "0", *source, cpus={0},
                    ready_timeout=900))
            accuracy = {name: {w["width"]: w["expected_accuracy"]
                               for w in httpx2.get(url + "/v1/models").json()["models"][0]["widths"]}
                        for name, url in urls.items()}
            for budget in budgets:
                for load in loads:
                    for turn in range(args.live_rounds):
                        for name, _ in grids if turn % 2 == 0 else grids[::-1]:
                            row = measure_point(urls[name] + path, body, load * cap, args.live_duration, budget * 1e3,
                                                accuracy[name], headers=headers)
                            row["device_speed"] = server_device_speed(urls[name])  # as the point ends
                            rows.append({"mode": "live", "budget_ms": budget * 1e3, "load": load, "policy": policy,
                                         "grid": name, "round": turn, **row})
                            print(f"live {name:>9} {policy:>9} budget {budget * 1e3:.1f} ms {load:g}x round {turn}: "
                                  f"{describe(row)}", flush=True)
                            time.sleep(1.0)
    return rows


def mean_over_rounds(rows: list[dict]) -> list[dict]:
    """One row per (mode, budget, load, policy, width list): the live rounds averaged (simulated rows
    pass through)."""
    return common.mean_over_rounds(rows, ("mode", "budget_ms", "load", "policy", "grid"))


def print_table(rows: list[dict], budgets: list[float], loads: list[float]) -> None:
    for mode in ("simulated", "live"):
        if not any(r["mode"] == mode for r in rows):
            continue
        for budget in budgets:
            print(f"\n{mode}, budget {budget * 1e3:.2f} ms")
            print(f"{'load':>5} {'policy':>10} | {'14 widths: att / top-1 per sent':>32} | "
                  f"{'4 widths: att / top-1 per sent':>31}")
            for load in loads:
                for policy in POLICIES:
                    cell = {r["grid"]: r for r in rows if r["mode"] == mode and r["load"] == load
                            and r["policy"] == policy and abs(r["budget_ms"] - budget * 1e3) < 1e-9}
                    a, b = cell["14 widths"], cell["4 widths"]
                    print(f"{load:>4}x {policy:>10} | {a['attainment']:>15.3f} / {a['accuracy_per_sent']:.4f}       "
                          f"| {b['attainment']:>14.3f} / {b['accuracy_per_sent']:.4f}")


def plot(rows: list[dict], top1: dict, budgets: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(mode, b) for mode in ("simulated", "live") for b in budgets
              if any(r["mode"] == mode for r in rows)]
    fig, axes = plt.subplots(1, 1 + 2 * len(panels), figsize=(5 * (1 + 2 * len(panels)), 4.2))
    axes[0].plot(list(top1), list(top1.values()), marker="o", label="grid (0.05)")
    axes[0].plot(FOUR, [top1[w] for w in FOUR], "s", markersize=9, mfc="none", label="4 widths")
    axes[0].set(xlabel="width", ylabel="top-1", title=title)
    axes[0].legend()
    for i, (mode, budget) in enumerate(panels):
        ax1, ax2 = axes[1 + 2 * i], axes[2 + 2 * i]
        for policy, style in zip(POLICIES, ("-", ":")):
            for grid, color in (("14 widths", "C0"), ("4 widths", "C1")):
                pts = [r for r in rows if r["mode"] == mode and r["policy"] == policy and r["grid"] == grid
                       and abs(r["budget_ms"] - budget * 1e3) < 1e-9]
                ax1.plot([r["load"] for r in pts], [r["attainment"] for r in pts], style, color=color, marker="o",
                         label=f"{grid}, {policy}")
                ax2.plot([r["load"] for r in pts], [r["accuracy_per_sent"] for r in pts], style, color=color,
                         marker="o", label=f"{grid}, {policy}")
        ax1.set(xlabel="load (x widest capacity)", ylabel="attainment", ylim=(0, 1.02),
                title=f"{mode}, budget {budget * 1e3:.1f} ms")
        ax1.axhline(0.99, color="grey", lw=0.5)
        ax2.set(xlabel="load (x widest capacity)", ylabel="mean top-1 per request sent", title=f"{mode}")
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
