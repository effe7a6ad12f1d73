"""The ``train``, ``evaluate`` and ``calibrate`` sub-commands."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_training_commands", "parse_widths"]


def parse_widths(text: str) -> tuple[float, ...]:
    """argparse type of every ``--widths`` flag: a list (``0.25,0.5,1``) or a grid (``0.35:1.0:0.05``)."""
    from models.widths import parse_widths as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# torch's threads for training, evaluation and calibration. One: on the project's 2-vCPU host a
# training step of the default model took 0.62 s on one thread against 1.34 s on torch's default (every
# core, fighting the data pipeline and whatever else runs), and 0.66 s against 13.4 s on a busy host.
DEFAULT_THREADS = 1


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="torch intra-op threads (more help only a large model on an idle many-core host)")


def add_training_commands(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter  # every flag's help ends with its default
    p = sub.add_parser("train", help="slimmable training (Algorithm 1); writes a checkpoint", formatter_class=fmt)
    p.add_argument("--arch", default="s_mobilenet_v2_cifar", help="registered architecture")
    p.add_argument("--dataset", default="digits",
                   help="'digits' (scikit-learn's, 8x8), 'digits-hard' (digits shifted, scaled and noised at 16x16) "
                        "or an ImageFolder-style directory")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training split")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--widths", type=parse_widths, default=None, help="comma-separated (default: the arch's)")
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the arch's)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step")
    p.add_argument("--lr", type=float, default=0.02, help="SGD learning rate (losses of all widths are summed)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    p.add_argument("--schedule", choices=["cosine", "step"], default="cosine", help="learning-rate schedule")
    p.add_argument("--inplace-distill", action="store_true", help="narrow widths learn from the widest's soft output")
    p.add_argument("--universal", action="store_true",
                   help="universally slimmable training (US-Nets): the arch's us_ twin (or a us_ arch), the sandwich "
                        "rule (widest, narrowest and --random-widths widths per step) with in-place distillation, "
                        "then BN statistics calibrated for every width of --widths (default: the arch's grid)")
    p.add_argument(
        "--random-widths", type=int, default=2, help="--universal: random widths per step besides the two ends"
    )
    p.add_argument(
        "--calibration-batches", type=int, default=20, help="--universal: training batches per calibrated width"
    )
    p.add_argument("--bn-mode", choices=["switchable", "shared"], default=None,
                   help="one BN per width (the paper's S-BN) or one shared BN (the naive baseline)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data order")
    p.add_argument("--device", default="cpu", help="torch device to train on")
    add_threads_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("evaluate", help="top-1 (top-5) per width on a data set's held-out split", formatter_class=fmt)
    p.add_argument("--checkpoint", required=True, help="checkpoint to evaluate")
    p.add_argument("--dataset", default=None,
                   help="as train's --dataset; its held-out split is used (default: the data set the checkpoint's "
                        "card names; another one is recorded as such in the accuracy's source)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--out", default=None,
                   help="also write a copy of the checkpoint whose metadata holds the measured top-1 per width "
                        "(the expected accuracy the server reports)")
    add_threads_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser(
        "calibrate", help="recompute each width's BN statistics; writes a new checkpoint", formatter_class=fmt
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint to calibrate")
    p.add_argument("--widths", type=parse_widths, default=None,
                   help="universally slimmable checkpoints: the widths to calibrate, a list or lo:hi:step (e.g. "
                        "0.35:1.0:0.05; any width in the model's range); default: every declared width")
    p.add_argument("--dataset", default=None,
                   help="as train's --dataset; its training split is used (default: the data set the checkpoint's "
                        "card names; another one is recorded as such in the accuracy's source)")
    p.add_argument("--batches", type=int, default=20, help="batches of training data per width")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch")
    p.add_argument("--out", required=True, help="output .safetensors (with the held-out top-1 after calibration)")
    add_threads_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_calibrate)


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    import models
    from models.training import TrainConfig, load_dataset, train

    torch.set_num_threads(args.threads)
    arch = args.arch
    if args.universal and not arch.startswith("us_"):
        arch = "us_" + arch.removeprefix("s_")
        if arch not in models.list_models():
            raise ValueError(f"{args.arch} has no universally slimmable twin; us_ architectures: "
                             f"{', '.join(m for m in models.list_models() if m.startswith('us_'))}")
    universal = arch.startswith("us_")
    if universal and args.bn_mode is not None:
        raise ValueError(
            "--bn-mode does not apply to universally slimmable nets (shared affine, calibrated statistics)"
        )
    kwargs = {} if universal else {"bn_mode": args.bn_mode or "switchable"}
    if args.widths:
        kwargs["widths"] = args.widths
    if args.input_size:
        kwargs["input_size"] = args.input_size
    probe = models.create(arch, **kwargs)
    data = load_dataset(args.dataset, probe.input_size, probe.in_channels)
    torch.manual_seed(args.seed)  # the initial weights depend on the seed too
    net = models.create(arch, num_classes=data.num_classes, **kwargs)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, inplace_distill=args.inplace_distill or universal,
        random_widths=args.random_widths, calibration_batches=args.calibration_batches,
        seed=args.seed, device=args.device, progress=not args.no_progress,
    )
    result = train(net, data, config)
    net.cpu().eval()
    card = models.ModelCard.for_net(
        net, mean=data.mean, std=data.std, labels=data.labels, accuracy=result.val_top1,
        accuracy_source=f"widthwise train: held-out split of {data.name}",
        extra={"dataset": data.name,
               "training": {**config.__dict__, "final_loss": result.losses[-1] if result.losses else None}},
    )
    models.save_checkpoint(net, args.out, card)
    for w, acc in result.val_top1.items():
        print(f"width {w:g}: held-out top-1 {acc:.4f}")
    print(f"wrote {args.out}")
    return 0


def _load_for_data(args: argparse.Namespace, with_train: bool = True):
    """The checkpoint and the data set to measure it on: the one its card names unless ``--dataset``
    says otherwise; the third value describes the choice for ``accuracy_source``."""
    import torch

    import models
    from models.training import load_dataset

    torch.set_num_threads(args.threads)
    checkpoint = models.load_checkpoint(args.checkpoint)
    trained_on = checkpoint.card.extra.get("dataset")
    name = args.dataset or trained_on
    if name is None:
        raise ValueError(f"{args.checkpoint} does not say which data set it was trained on; pass --dataset")
    spec = checkpoint.card.input
    data = load_dataset(name, spec.size, spec.channels, mean=spec.mean, std=spec.std, with_train=with_train)
    if trained_on is not None and data.name != trained_on:
        print(f"note: measuring on {data.name}, not on {trained_on}, the data set the checkpoint was trained on",
              file=sys.stderr)
        where = f"{data.name} (not {trained_on}, the training data set)"
    else:
        where = data.name
    return checkpoint, data, where


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from models.training import evaluate

    checkpoint, data, where = _load_for_data(args, with_train=False)
    results = evaluate(checkpoint.net, data.x_val, data.y_val, progress=not args.no_progress)
    rows = [{"width": w, **m} for w, m in results.items()]
    if args.out:
        import models

        accuracy = {w: m["top1"] for w, m in results.items()}
        card = checkpoint.card.with_accuracy(accuracy, f"widthwise evaluate on {where}, held-out split")
        models.save_checkpoint(checkpoint.net, args.out, card)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "dataset": data.name, "widths": rows}))
    else:
        for r in rows:
            extra = f"  top-5 {r['top5']:.4f}" if "top5" in r else ""
            print(f"width {r['width']:g}: top-1 {r['top1']:.4f}{extra}")
        if args.out:
            print(f"wrote {args.out} (expected accuracy per width = the top-1 above)")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import models
    from models.rebuild import with_widths
    from models.training import calibrate_bn, evaluate
    from models.training.trainer import calibrate_universal
    from models.universal import UniversalNet

    checkpoint, data, where = _load_for_data(args)
    net, card = checkpoint.net, checkpoint.card
    if args.widths and not isinstance(net, UniversalNet):
        raise ValueError(
            f"--widths needs a universally slimmable checkpoint; {net.arch} has fixed widths {list(net.widths)}"
        )
    if args.widths:
        net = with_widths(net, sorted(set(net.widths) | set(args.widths)))
        card = card.at_widths(net.widths)
        calibrate_universal(net, data.x_train, args.widths, args.batches, args.batch_size,
                            progress=not args.no_progress)
    else:
        calibrate_bn(net, data.x_train, args.batches, args.batch_size, progress=not args.no_progress)
    accuracy = {w: m["top1"] for w, m in evaluate(net, data.x_val, data.y_val, progress=not args.no_progress).items()}
    card = card.with_accuracy(accuracy, f"widthwise calibrate on {where}, held-out split")
    models.save_checkpoint(net, args.out, card)
    for w, acc in accuracy.items():
        print(f"width {w:g}: held-out top-1 {acc:.4f} after calibration")
    print(f"wrote {args.out}")
    return 0
