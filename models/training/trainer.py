"""Slimmable training (Yu et al., Algorithm 1), evaluation per width, and BN re-calibration.

Algorithm 1: for every batch, run forward and backward at every width (widest
first), accumulate the gradients, then take one optimizer step. With in-place
distillation (US-Nets, Yu & Huang, ICCV 2019) the narrower widths learn from
the widest width's detached soft output instead of the labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..net import SlimmableNet
from ..slimmable import SwitchableBatchNorm2d
from ..universal import UniversalNet
from .data import Dataset

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "calibrate_bn", "calibrate_universal", "sandwich_widths"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.02  # the losses of all widths are summed, so the step is ~len(widths) x larger
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # or "step": x0.1 at 50% and 75% of the epochs
    inplace_distill: bool = False
    # Universally slimmable nets (US-Nets' sandwich rule): each step trains the widest, the narrowest
    # and this many widths drawn uniformly from the range in between.
    random_widths: int = 2
    calibration_batches: int = 20  # per width, after training (US-Nets' post-training BN statistics)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch (widest width)
    val_top1: dict[float, float] = field(default_factory=dict)


def _lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if schedule == "step":
        return 0.01 if step >= 0.75 * total else 0.1 if step >= 0.5 * total else 1.0
    raise ValueError(f"schedule must be cosine or step, got {schedule!r}")


def train(net: SlimmableNet, data: Dataset, config: TrainConfig) -> TrainResult:
    """Train ``net`` in place; returns per-epoch losses and held-out top-1 per width."""
    torch.manual_seed(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)
    device = torch.device(config.device)
    net.to(device).train()
    optimizer = torch.optim.SGD(
        net.parameters(), lr=config.lr, momentum=config.momentum,
        nesterov=config.nesterov, weight_decay=config.weight_decay,
    )
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(config.schedule, s, total_steps))
    universal = isinstance(net, UniversalNet)
    widest_first = sorted(net.widths, reverse=True)
    tracked = (net.width_range[1], net.width_range[0]) if universal else widest_first
    draw = torch.Generator().manual_seed(config.seed + 1)
    result = TrainResult()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=shuffle)
        epoch_loss, correct = 0.0, {w: 0 for w in tracked}
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=None if config.progress else True,
            leave=False,
        )
        for step in bar:
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            teacher = None
            step_widths = sandwich_widths(net, config.random_widths, draw) if universal else widest_first
            for width in step_widths:
                logits = net(x, width=width)
                if teacher is None or not config.inplace_distill:
                    loss = F.cross_entropy(logits, y)
                else:
                    loss = torch.sum(-teacher * F.log_softmax(logits, dim=1), dim=1).mean()
                loss.backward()  # gradients of all widths accumulate before the single step
                if teacher is None:
                    teacher = F.softmax(logits.detach(), dim=1)
                    epoch_loss += loss.item() * len(y)
                if width in correct:
                    correct[width] += (logits.argmax(1) == y).sum().item()
            optimizer.step()
            scheduler.step()
            seen = min(n, (step + 1) * config.batch_size)
            bar.set_postfix(
                loss=f"{epoch_loss / seen:.3f}", **{f"acc{w:g}": f"{correct[w] / seen:.2f}" for w in tracked}
            )
        result.losses.append(epoch_loss / n)
    if universal:  # BN statistics for every declared width, computed for the final weights
        calibrate_universal(net, data.x_train, net.widths, config.calibration_batches, config.batch_size, config.seed)
    result.val_top1 = {w: r["top1"] for w, r in evaluate(net, data.x_val, data.y_val).items()}
    return result


def sandwich_widths(net: UniversalNet, random_widths: int, generator: torch.Generator) -> list[float]:
    """One step's widths by the sandwich rule: widest, narrowest, then ``random_widths`` uniform draws."""
    low, high = net.width_range
    draws = torch.rand(random_widths, generator=generator).tolist()
    return [high, low, *(low + (high - low) * u for u in draws)]


@torch.inference_mode()
def evaluate(
    net: SlimmableNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256, progress: bool = False
) -> dict[float, dict[str, float]]:
    """Top-1 (and top-5 when there are more than 5 classes) per width, as fractions.

    A universally slimmable net is evaluated at its calibrated widths (the others have no statistics)."""
    net.eval()
    device = next(net.parameters()).device
    results = {}
    widths = net.calibrated if isinstance(net, UniversalNet) else net.widths
    for width in tqdm(widths, desc="evaluating widths", unit="width", disable=None if progress else True, leave=False):
        top1 = top5 = 0
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            logits = net(xb, width=width)
            top1 += (logits.argmax(1) == yb).sum().item()
            if net.num_classes > 5:
                top5 += (logits.topk(5, dim=1).indices == yb[:, None]).any(1).sum().item()
        metrics = {"top1": top1 / len(y)}
        if net.num_classes > 5:
            metrics["top5"] = top5 / len(y)
        results[width] = metrics
    return results


@torch.no_grad()
def calibrate_bn(
    net: SlimmableNet, x: torch.Tensor, batches: int, batch_size: int = 64, seed: int = 0, progress: bool = False
) -> None:
    """Recompute every switch's BN statistics: reset, then a cumulative average over ``batches`` batches.

    This is the post-training statistics calibration of US-Nets; it needs
    private BN per switch (switchable mode).
    """
    if isinstance(net, UniversalNet):
        calibrate_universal(net, x, net.widths, batches, batch_size, seed, progress)
        return
    if net.bn_mode != "switchable":
        raise ValueError("BN calibration needs switchable BN (each width has its own statistics)")
    widths = tqdm(
        net.widths, desc="calibrating BN per width", unit="width", disable=None if progress else True, leave=False
    )
    for idx, width in enumerate(widths):
        switch_bns = [m.bn[idx] for m in net.modules() if isinstance(m, SwitchableBatchNorm2d)]
        for bn in switch_bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average
        net.train()
        for chunk in _calibration_batches(net, x, batches, batch_size, seed):
            net(chunk, width=width)
        for bn in switch_bns:
            bn.momentum = 0.1
    net.eval()


@torch.no_grad()
def calibrate_universal(net: UniversalNet, x: torch.Tensor, widths, batches: int, batch_size: int = 64,
                        seed: int = 0, progress: bool = False) -> None:
    """US-Nets' post-training BN statistics: for each width, reset its slot and average ``batches``
    training batches run *in training mode* at that width (eval mode would leave the statistics as
    they were, the collapse reported on the official repository). ``widths`` must be declared slots
    (``UniversalNet.with_widths`` adds slots). Plain BNs shared by every width stay as trained."""
    slots = {w: net.switch_for_slot(w) for w in widths}
    plain_norms = [m for m in net.modules() if type(m) is torch.nn.BatchNorm2d and m.track_running_stats]
    norms = net.us_norms()
    for width in tqdm(
        widths, desc="calibrating BN per width", unit="width", disable=None if progress else True, leave=False
    ):
        for norm in norms:
            norm.reset_slot(slots[width])
        net.train()
        for norm in plain_norms:
            norm.eval()
        for chunk in _calibration_batches(net, x, batches, batch_size, seed):
            net(chunk, width=width, accumulate=True)
    net.eval()
    net.calibrated = tuple(sorted(set(net.calibrated) | {net.widths[s] for s in slots.values()}))


def _calibration_batches(net: SlimmableNet, x: torch.Tensor, batches: int, batch_size: int, seed: int):
    """The ``batches`` training batches a width is calibrated on -- the same ones for every width --
    from a seeded shuffle of ``x``, moved to the net's device one at a time."""
    device = next(net.parameters()).device
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for b in range(batches):
        yield x[order[(b * batch_size) % len(x):][:batch_size]].to(device)
