"""``widthwise`` command line: serve, train, evaluate, calibrate, profile, convert, simulate.

Each sub-command imports what it needs when it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]


BENCHMARKS = ("engine", "ladder", "overhead", "overhead_ab", "decode", "policy_sim", "load", "soak")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="widthwise", description="Serve slimmable networks under latency budgets.")
    sub = parser.add_subparsers(dest="command", required=True)

    from models.training.cli import parse_widths

    from .settings import add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="start the HTTP server (default: the embedded digits model)"))

    p = sub.add_parser("profile", help="MACs, params and measured latency per width")
    p.add_argument("--arch", default="s_mobilenet_v2")
    p.add_argument("--checkpoint", help="profile this checkpoint instead of a randomly initialised --arch")
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the model's)")
    p.add_argument("--widths", type=parse_widths, default=None, help="comma-separated widths (default: the arch's)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per width (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--save-profile", metavar="PATH", help="also measure every (width, batch) and write a latency profile JSON")
    p.add_argument("--max-batch-size", type=int, default=8, help="largest batch in the saved profile")

    p = sub.add_parser("simulate", help="discrete-event simulation of a policy under a load trace")
    p.add_argument("--profile", required=True, help="latency profile JSON (widthwise profile --save-profile)")
    p.add_argument("--policy", default="max-width")
    p.add_argument("--trace", default="poisson", help="poisson, bursty, step, or a file of arrival times")
    p.add_argument("--rate", type=float, default=100.0, help="mean arrival rate (requests/s)")
    p.add_argument("--budget-ms", type=float, required=True, help="latency budget of every request")
    p.add_argument("--duration", type=float, default=30.0, help="simulated seconds")
    p.add_argument("--checkpoint", help="read expected accuracy per width from this checkpoint's metadata")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--queue-limit", type=int, default=256)
    p.add_argument("--admission", choices=["reject", "best_effort"], default="reject")
    p.add_argument("--noise", type=float, default=0.05, help="log-normal sigma of batch times")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("convert", help="official .pt -> widthwise .safetensors")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--arch", default=None, help="architecture (default: inferred from the layout)")
    p.add_argument("--widths", type=parse_widths, default=None)

    p = sub.add_parser("bench", help="run a benchmark from bench/ (from a checkout of the repository)")
    p.add_argument("name", choices=BENCHMARKS, help=", ".join(BENCHMARKS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of that benchmark (see its --help)")

    from models.training.cli import add_training_commands

    add_training_commands(sub)
    return parser


def _cmd_profile(args: argparse.Namespace) -> int:
    import torch

    import models

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        net = models.load_checkpoint(args.checkpoint)
    else:
        kwargs = {"widths": args.widths} if args.widths else {}
        if args.input_size:
            kwargs["input_size"] = args.input_size
        net = models.create(args.arch, **kwargs)
    costs = models.profile_net(net, input_size=args.input_size, repeats=args.repeats)
    if args.save_profile:
        _save_profile(net, args)
    rows = [{"width": c.width, "macs": c.macs, "params": c.params, "latency_ms": c.latency_ms} for c in costs]
    if args.json:
        print(json.dumps({"arch": net.arch, "input_size": args.input_size or net.input_size, "widths": rows}))
        return 0
    print(f"{net.arch} @ {args.input_size or net.input_size}px, batch 1, {torch.get_num_threads()} threads")
    print(f"{'width':>6} {'MACs':>14} {'params':>12} {'latency ms':>11}")
    for r in rows:
        print(f"{r['width']:>6.2f} {r['macs']:>14,} {r['params']:>12,} {r['latency_ms']:>11.3f}")
    return 0


def _save_profile(net, args: argparse.Namespace) -> None:
    from models.checkpoint import OFFICIAL_TOP1
    from policies import batch_sizes_up_to

    from .runtime import Runtime, profile_runtime

    runtime = Runtime(net, "cpu")
    profile = profile_runtime(runtime, batch_sizes_up_to(args.max_batch_size), args.repeats)
    accuracy = getattr(net, "metadata", {}).get("accuracy") or OFFICIAL_TOP1.get(net.arch, {})
    data = {
        **profile.as_dict(),
        "arch": net.arch,
        "input_size": net.input_size,
        "device": str(runtime.device),
        "accuracy": {str(w): a for w, a in accuracy.items()},
    }
    with open(args.save_profile, "w") as f:
        json.dump(data, f, indent=2)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from policies import LatencyProfile, make_policy
    from policies.simulator import arrival_times, simulate

    with open(args.profile) as f:
        raw = json.load(f)
    profile = LatencyProfile.from_dict(raw)
    accuracy = {float(w): float(a) for w, a in (raw.get("accuracy") or {}).items()}
    if args.checkpoint:
        import models

        accuracy = dict(models.load_checkpoint(args.checkpoint).metadata.get("accuracy", {}))
    policy = make_policy(args.policy, profile.widths)
    arrivals = arrival_times(args.trace, args.rate, args.duration, args.seed)
    result = simulate(
        profile, policy, arrivals, args.budget_ms / 1e3, accuracy or None, args.max_batch_size,
        args.max_queue_delay_ms / 1e3, args.queue_limit, args.admission, args.noise, args.seed,
    )
    report = {"policy": policy.name, "trace": args.trace, "rate": args.rate, "budget_ms": args.budget_ms, **result.as_dict()}
    if args.json:
        print(json.dumps(report))
        return 0
    acc = f"{result.mean_accuracy:.4f}" if result.mean_accuracy is not None else "n/a"
    print(f"policy {policy.name}, trace {args.trace} at {args.rate:g} req/s, budget {args.budget_ms:g} ms, {result.sent} requests")
    print(f"attainment {result.attainment:.4f}  mean accuracy {acc}  p50 {result.p50_ms or 0:.2f} ms  p99 {result.p99_ms or 0:.2f} ms")
    print(f"served {result.served}, on time {result.on_time}, rejected {result.rejected}")
    print("width mix: " + ", ".join(f"{w}: {share:.1%}" for w, share in result.width_mix.items()))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    try:
        module = importlib.import_module(f"bench.{args.name}")
    except ModuleNotFoundError:
        print("widthwise bench: error: the bench/ programs ship with the repository; run from its root", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [f"bench.{args.name}", *args.args]
    try:
        module.main()
    finally:
        sys.argv = saved
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    import models

    net = models.load_checkpoint(args.src, arch=args.arch, widths=args.widths)
    models.save_checkpoint(net, args.dst, net.metadata)
    print(f"wrote {args.dst}: {net.arch}, widths {list(net.widths)}, {net.num_classes} classes")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .settings import settings_from_args
    from .main import run_server

    return run_server(settings_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"profile": _cmd_profile, "convert": _cmd_convert, "serve": _cmd_serve, "simulate": _cmd_simulate,
                "bench": _cmd_bench}
    handler = handlers.get(args.command) or args.handler
    from models.checkpoint import CheckpointError

    try:
        return handler(args)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"widthwise {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
