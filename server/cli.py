"""``widthwise`` command line: serve, train, evaluate, calibrate, profile, convert, simulate.

Each sub-command imports what it needs when it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]


def _widths(text: str) -> tuple[float, ...]:
    return tuple(float(w) for w in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="widthwise", description="Serve slimmable networks under latency budgets.")
    sub = parser.add_subparsers(dest="command", required=True)

    from .settings import add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="start the HTTP server (default: the embedded digits model)"))

    p = sub.add_parser("profile", help="MACs, params and measured latency per width")
    p.add_argument("--arch", default="s_mobilenet_v2")
    p.add_argument("--checkpoint", help="profile this checkpoint instead of a randomly initialised --arch")
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the model's)")
    p.add_argument("--widths", type=_widths, default=None, help="comma-separated widths (default: the arch's)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per width (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("convert", help="official .pt -> widthwise .safetensors")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--arch", default=None, help="architecture (default: inferred from the layout)")
    p.add_argument("--widths", type=_widths, default=None)

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
    rows = [{"width": c.width, "macs": c.macs, "params": c.params, "latency_ms": c.latency_ms} for c in costs]
    if args.json:
        print(json.dumps({"arch": net.arch, "input_size": args.input_size or net.input_size, "widths": rows}))
        return 0
    print(f"{net.arch} @ {args.input_size or net.input_size}px, batch 1, {torch.get_num_threads()} threads")
    print(f"{'width':>6} {'MACs':>14} {'params':>12} {'latency ms':>11}")
    for r in rows:
        print(f"{r['width']:>6.2f} {r['macs']:>14,} {r['params']:>12,} {r['latency_ms']:>11.3f}")
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
    handlers = {"profile": _cmd_profile, "convert": _cmd_convert, "serve": _cmd_serve}
    handler = handlers.get(args.command) or args.handler
    from models.checkpoint import CheckpointError

    try:
        return handler(args)
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"widthwise {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
