"""``widthwise`` command line: serve, train, evaluate, calibrate, profile, convert, simulate.

Each sub-command imports what it needs when it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser", "bench_programs"]


HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter  # every flag's help ends with its default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="widthwise", description="Serve slimmable networks under latency budgets.")
    sub = parser.add_subparsers(dest="command", required=True)

    from models.training.cli import parse_widths
    from server.settings import SCHEDULING_FIELDS, add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="start the HTTP server (default: the embedded digits model)"))

    p = sub.add_parser("profile", help="MACs, params and measured latency per width, as the server would run them",
                       formatter_class=HELP_FORMAT)
    p.add_argument("--arch", default="s_mobilenet_v2", help="architecture to profile (random weights)")
    p.add_argument("--checkpoint", help="profile this checkpoint instead of a randomly initialised --arch")
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the model's)")
    p.add_argument("--widths", type=parse_widths, default=None, help="comma-separated widths (default: the arch's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="as serve's --device")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto", help="as serve's --backend")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="as serve's --precision")
    p.add_argument("--weights", choices=["per-width", "shared"], default="per-width", help="as serve's --weights")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: as serve, ONNX Runtime all usable CPUs but one)")
    p.add_argument("--repeats", type=int, default=15, help="timed runs per (width, batch size); the median is kept")
    p.add_argument("--max-batch-size", type=int, default=8, help="largest batch size measured")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--save-profile", metavar="PATH",
                   help="write the measured latency profile (with its fingerprint) for serve --profile and simulate")

    p = sub.add_parser(
        "simulate", help="discrete-event simulation of a policy under a load trace", formatter_class=HELP_FORMAT
    )
    p.add_argument(
        "--profile",
        required=True,
        help="latency profile JSON (widthwise profile --save-profile or serve --save-profile)",
    )
    p.add_argument("--trace", default="poisson", help="poisson, bursty, step, or a file of arrival times")
    p.add_argument("--rate", type=float, default=100.0, help="mean arrival rate (requests/s)")
    p.add_argument("--budget-ms", type=float, required=True, help="latency budget of every request")
    p.add_argument("--duration", type=float, default=30.0, help="simulated seconds")
    p.add_argument(
        "--checkpoint", help="read expected accuracy per width from this checkpoint's metadata (default: the profile's)"
    )
    add_serve_arguments(p, SCHEDULING_FIELDS)  # the scheduler and policy exactly as `serve` configures them
    p.add_argument("--noise", type=float, default=0.05, help="log-normal sigma of batch times")
    p.add_argument("--request-cpu-ms", type=float, default=0.0,
                   help="the server's own CPU per request on the model's cores (serve's /v1/models request_cpu_ms; "
                        "0: the server has cores of its own)")
    p.add_argument(
        "--speed-trace",
        default=None,
        metavar="FILE",
        help="the device's measured speed over time relative to the profile (JSON points [[t, factor], ...], "
        "as bench.sim_vs_live writes them): replays a host whose speed drifts",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of arrivals and noise")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("convert", help="official .pt -> widthwise .safetensors", formatter_class=HELP_FORMAT)
    p.add_argument("src", help="official checkpoint (.pt: a state dict or {'model': state dict})")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--arch", default=None, help="architecture (default: inferred from the layout)")
    p.add_argument("--widths", type=parse_widths, default=None, help="comma-separated widths (default: the arch's)")
    p.add_argument("--labels", metavar="FILE", default=None,
                   help="class labels, one per line in class order (default: the ImageNet-1k names for a "
                        "1000-class model, else none)")
    p.add_argument("--accuracy", default=None, type=parse_accuracy,
                   help="expected top-1 per width, as '0.35=0.597,1.0=0.705', or 'official' for the paper's "
                        "ImageNet figures (only true of the unmodified released weights). Default: none; measure "
                        "it with `widthwise evaluate --out`")

    checkout = bench_checkout()
    found = bench_programs(checkout) if checkout else []
    p = sub.add_parser("bench", help="run a program of bench/ (needs a checkout of the repository; the same as "
                                     "`python -m bench.NAME` there)")
    p.add_argument("name", help=f"one of: {', '.join(found)}" if found else "a program of bench/")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of that program (see its --help)")

    from models.training.cli import add_training_commands

    add_training_commands(sub)
    return parser


def _cmd_profile(args: argparse.Namespace) -> int:
    """Measure through the same runtime the server uses, so the table is what --save-profile writes."""
    from tqdm import tqdm

    import models
    from policies import batch_sizes_up_to
    from server.engine.startup import save_profile
    from server.runtime import Runtime, RuntimeConfig, profile_runtime

    if args.checkpoint:
        checkpoint = models.load_checkpoint(args.checkpoint)
        net, card = checkpoint.net, checkpoint.card
    else:
        kwargs = {"widths": args.widths} if args.widths else {}
        if args.input_size:
            kwargs["input_size"] = args.input_size
        net = models.create(args.arch, **kwargs)
        card = models.ModelCard.for_net(net)
    shape = (net.in_channels, net.input_size, net.input_size)
    batch_sizes = batch_sizes_up_to(args.max_batch_size)
    with tqdm(total=2 * len(net.widths), desc="exporting", unit="width", leave=False, disable=None) as bar:
        def advance(_width: float) -> None:
            bar.update()

        config = RuntimeConfig(device=args.device, backend=args.backend, threads=args.threads, precision=args.precision,
                               weights=args.weights)
        runtime = Runtime.from_config(net, config, batch_sizes, progress=advance)
        bar.set_description("profiling")
        profile = profile_runtime(runtime, batch_sizes, args.repeats, progress=advance)
    if args.save_profile:
        save_profile(Path(args.save_profile), profile, card)
    table = profile.as_dict()["widths"]
    rows = []
    for width in net.widths:
        module = net.switch(width)
        rows.append(
            {
                "width": width,
                "macs": models.count_macs(module, shape),
                "params": models.profiling.count_params(module),
                "latency_ms": {int(b): s * 1e3 for b, s in table[str(width)].items()},
            }
        )
    fp = profile.fingerprint
    if args.json:
        print(json.dumps({"arch": net.arch, "input_size": net.input_size, "fingerprint": fp, "widths": rows}))
        return 0
    print(f"{net.arch} @ {net.input_size}px on {fp['device']}, {fp['backend']} backend, {fp['precision']}, "
          f"{fp['threads']} threads; median of {args.repeats} runs per batch size")
    print(f"{'width':>6} {'MACs':>14} {'params':>12}" + "".join(f"{f'b={b} ms':>10}" for b in batch_sizes))
    for r in rows:
        print(f"{r['width']:>6.2f} {r['macs']:>14,} {r['params']:>12,}"
              + "".join(f"{r['latency_ms'][b]:>10.3f}" for b in batch_sizes))
    if args.save_profile:
        print(f"wrote {args.save_profile} (these latencies, with their fingerprint)")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from policies import LatencyProfile, make_policy
    from policies.simulator import SpeedTrace, arrival_times, simulate
    from server.settings import settings_from_args

    with open(args.profile) as f:
        raw = json.load(f)
    settings = settings_from_args(args)
    profile = LatencyProfile.from_dict(raw, settings.profile_ewma_alpha)  # learns from its batches as serve's does
    accuracy = {float(w): float(a) for w, a in (raw.get("accuracy") or {}).items()}
    if args.checkpoint:
        import models

        accuracy = dict(models.load_checkpoint(args.checkpoint).card.accuracy)
    policy = make_policy(settings.policy, profile.widths, accuracy or None)
    arrivals = arrival_times(args.trace, args.rate, args.duration, args.seed)
    speed = SpeedTrace.load(args.speed_trace) if args.speed_trace else None
    result = simulate(profile, policy, arrivals, args.budget_ms / 1e3, accuracy or None, settings.scheduler_config(),
                      args.noise, args.seed, request_cpu_s=args.request_cpu_ms / 1e3, speed=speed)
    report = {
        "policy": policy.name,
        "trace": args.trace,
        "rate": args.rate,
        "budget_ms": args.budget_ms,
        **result.as_dict(),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    acc = f"{result.mean_accuracy:.4f}" if result.mean_accuracy is not None else "n/a"
    print(
        f"policy {policy.name}, trace {args.trace} at {args.rate:g} req/s, budget {args.budget_ms:g} ms, "
        f"{result.sent} requests"
    )
    print(
        f"attainment {result.attainment:.4f}  mean accuracy {acc}  p50 {result.p50_ms or 0:.2f} ms  p99 "
        f"{result.p99_ms or 0:.2f} ms"
    )
    print(f"served {result.served}, on time {result.on_time}, rejected {result.rejected}")
    print("width mix: " + ", ".join(f"{w}: {share:.1%}" for w, share in result.width_mix.items()))
    return 0


def bench_checkout() -> Path | None:
    """The checkout whose bench/ to run: the current directory, or the one an editable install points
    at (bench/ ships with the repository, not the package)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (candidate / "bench" / "__init__.py").is_file():
            return candidate
    return None


def bench_programs(checkout: Path) -> list[str]:
    """The programs of ``checkout``'s bench/: its modules that define ``main(argv)``."""
    return sorted(path.stem for path in (checkout / "bench").glob("*.py")
                  if "\ndef main(argv" in path.read_text())


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    checkout = bench_checkout()
    if checkout is None:
        print("widthwise bench: error: the bench/ programs ship with the repository, not the package; "
              "run this from a checkout of widthwise", file=sys.stderr)
        return 2
    found = bench_programs(checkout)
    if args.name not in found:
        print(f"widthwise bench: error: no program {args.name!r} in {checkout / 'bench'}; choose one of "
              f"{', '.join(found)}", file=sys.stderr)
        return 2
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    result = importlib.import_module(f"bench.{args.name}").main(args.args)
    return result if isinstance(result, int) else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    import models
    from models.checkpoint import OFFICIAL_TOP1
    from models.labels import check_label_count, read_labels

    checkpoint = models.load_checkpoint(args.src, arch=args.arch, widths=args.widths)
    net, card = checkpoint.net, checkpoint.card
    if args.labels:
        labels = read_labels(args.labels)
        check_label_count(labels, net.num_classes, f"labels file {args.labels}")
        card = card.with_labels(labels)
    if args.accuracy == "official":
        if net.arch not in OFFICIAL_TOP1 or tuple(OFFICIAL_TOP1[net.arch]) != net.widths:
            raise ValueError(f"no official accuracy for {net.arch} at widths {list(net.widths)}")
        card = card.with_accuracy(
            OFFICIAL_TOP1[net.arch], "official ImageNet top-1 (paper; US-Nets: official model zoo)"
        )
    elif args.accuracy:
        undeclared = sorted(set(args.accuracy) - set(net.widths))
        if undeclared:
            raise ValueError(f"--accuracy names widths {undeclared} that the model does not declare {list(net.widths)}")
        card = card.with_accuracy(args.accuracy, "given to convert --accuracy")
    models.save_checkpoint(net, args.dst, card)
    accuracy = "expected accuracy: " + ("given" if args.accuracy else "unknown (measure it: widthwise evaluate --out)")
    labels = f"{len(card.labels)} labels" if card.labels else "no labels"
    print(f"wrote {args.dst}: {net.arch}, widths {list(net.widths)}, {net.num_classes} classes, {labels}, {accuracy}")
    return 0


def parse_accuracy(text: str) -> dict[float, float] | str:
    """``official`` or ``0.35=0.597,1.0=0.705`` -> {0.35: 0.597, 1.0: 0.705} (top-1 fractions)."""
    if text == "official":
        return text
    out = {}
    for part in text.split(","):
        width, sep, value = part.partition("=")
        try:
            out[float(width)] = accuracy = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not WIDTH=TOP1") from None
        if not sep or not 0.0 <= accuracy <= 1.0:
            raise argparse.ArgumentTypeError(f"{part!r}: top-1 must be a fraction between 0 and 1")
    return out


def _cmd_serve(args: argparse.Namespace) -> int:
    from server.main import run_server
    from server.settings import settings_from_args

    return run_server(settings_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"profile": _cmd_profile, "convert": _cmd_convert, "serve": _cmd_serve, "simulate": _cmd_simulate,
                "bench": _cmd_bench}
    handler = handlers.get(args.command) or args.handler
    from models.errors import CheckpointError

    try:
        return handler(args)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"widthwise {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
