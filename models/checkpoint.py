"""Checkpoint IO: our ``.safetensors`` format and the official ``.pt`` files.

Nothing here unpickles arbitrary objects: safetensors holds tensors only, and
official files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file

from .card import ModelCard
from .embedded import DEFAULT_CHECKPOINT  # noqa: F401  (re-exported: models.checkpoint.DEFAULT_CHECKPOINT)
from .errors import CheckpointError
from .labels import imagenet1k_labels
from .metadata import CheckpointMetadata, metadata_error
from .net import SlimmableNet
from .rebuild import select_widths
from .registry import create, list_models
from .universal import UniversalNet

__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "read_official_state_dict",
           "OFFICIAL_TOP1"]

METADATA_KEY = "widthwise"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ERRORS_US_V1 = (
    28.2,
    28.3,
    28.4,
    28.7,
    28.7,
    29.1,
    29.4,
    29.7,
    30.2,
    30.3,
    30.5,
    30.9,
    31.2,
    31.7,
    32.2,
    32.5,
    33.2,
    33.7,
    34.4,
    35.0,
    35.8,
    36.5,
    37.3,
    38.1,
    39.0,
    40.0,
    41.0,
    41.9,
    42.7,
    44.2,
    44.3,
)  # % at widths 1.0, 0.975, ..., 0.25
ERRORS_US_V2 = (
    28.5,
    28.5,
    28.8,
    28.9,
    29.1,
    29.1,
    29.4,
    29.9,
    30.0,
    30.2,
    30.4,
    30.7,
    31.1,
    31.4,
    31.7,
    31.7,
    32.4,
    32.4,
    34.4,
    34.6,
    34.9,
    35.1,
    35.8,
    35.8,
    36.6,
    36.7,
    37.7,
)  # % at widths 1.0, 0.975, ..., 0.35


def _from_errors(narrowest: float, errors_widest_first: tuple[float, ...]) -> dict[float, float]:
    n = len(errors_widest_first)
    return {round(narrowest + 0.025 * i, 6): round(1 - errors_widest_first[n - 1 - i] / 100, 4) for i in range(n)}


# Official ImageNet top-1 accuracy (1 - error) per width, as fractions (docs/design.md, fact 5). Never assumed
# for a checkpoint: `convert --accuracy official` writes them only when the operator says so.
OFFICIAL_TOP1: dict[str, dict[float, float]] = {
    "s_mobilenet_v1": {0.25: 0.531, 0.5: 0.648, 0.75: 0.695, 1.0: 0.715},
    "s_mobilenet_v2": {0.35: 0.597, 0.5: 0.644, 0.75: 0.689, 1.0: 0.705},
    "s_resnet50": {0.25: 0.650, 0.5: 0.721, 0.75: 0.749, 1.0: 0.760},
    "s_shufflenet": {0.5: 0.573, 1.0: 0.655, 2.0: 0.713},  # Table 3: top-1 error 42.7 / 34.5 / 28.7
    # The official repository's MODEL_ZOO.md: the calibrated US-Nets' top-1 error at every slot
    # (widths 1.0 down by 0.025), listed here as 1 - error in ascending width order.
    "us_mobilenet_v1": _from_errors(0.25, ERRORS_US_V1),
    "us_mobilenet_v2": _from_errors(0.35, ERRORS_US_V2),
}


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the net (eval mode) and its card."""

    net: SlimmableNet
    card: ModelCard

    def select(self, widths: tuple[float, ...] | None) -> "Checkpoint":
        """This checkpoint serving ``widths`` (:func:`~models.rebuild.select_widths`), its card to match."""
        net = select_widths(self.net, widths)
        return self if net is self.net else Checkpoint(net, self.card.at_widths(net.widths))


def save_checkpoint(net: SlimmableNet, path: str | Path, card: ModelCard | None = None) -> None:
    """Write ``net`` as safetensors with its architecture config and ``card`` (default: a fresh net's card)."""
    meta = {**(card or ModelCard.for_net(net)).metadata(), **net.config()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # e.g. out/, where the CLI's examples write
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    # safetensors writes 0600; a checkpoint is data that other users (a container's non-root user) must read.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_checkpoint(path: str | Path, arch: str | None = None, widths: tuple[float, ...] | None = None) -> Checkpoint:
    """Load our ``.safetensors`` checkpoint or an official ``.pt`` state dict: the net, in eval mode,
    and its card (mean, std, labels, accuracy per width, ...). For official files the architecture is
    inferred from the state-dict layout unless ``arch``/``widths`` are given.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise CheckpointError(f"checkpoint {path} is {kind}; pass a .safetensors or .pt file")
    with open(path, "rb") as f:
        head = f.read(8)
    if _looks_like_safetensors(path, head):
        return _load_safetensors(path)
    return _load_official(path, arch, widths)


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    if path.suffix == ".safetensors":
        return True
    # safetensors starts with a little-endian u64 header length; zip (torch.save) starts with "PK".
    return not head.startswith(b"PK") and len(head) == 8 and int.from_bytes(head, "little") < path.stat().st_size


def _load_safetensors(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get(METADATA_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if raw_meta is None:
        raise CheckpointError(f"{path}: safetensors file has no {METADATA_KEY!r} metadata")
    try:
        meta = json.loads(raw_meta)
    except ValueError as exc:
        raise CheckpointError(f"{path}: metadata is not JSON ({exc})") from None
    meta = _validate_metadata(meta, path)
    try:
        universal = {"width_range": tuple(meta["width_range"]), "calibrated": tuple(meta.get("calibrated") or ())} \
            if meta.get("width_range") is not None else {}
        net = create(
            meta["arch"],
            widths=tuple(meta["widths"]),
            num_classes=meta["num_classes"],
            input_size=meta["input_size"],
            in_channels=meta.get("in_channels", 3),
            bn_mode=meta.get("bn_mode", "switchable"),
            **universal,
        )
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot build {meta['arch']} from its metadata: {exc}") from None
    _load_state_strict(net, state, path)
    return Checkpoint(net, ModelCard.from_metadata(net, meta))


def _validate_metadata(meta: Any, path: Path) -> dict:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object")
    try:
        CheckpointMetadata.model_validate(meta)
    except ValidationError as exc:
        raise CheckpointError(f"{path}: invalid metadata: {metadata_error(exc)}") from None
    if meta["arch"] not in list_models():
        raise CheckpointError(f"{path}: unknown arch {meta['arch']!r}; registered: {', '.join(list_models())}")
    return meta


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of an official ``.pt`` (raw state dict or ``{'model': sd}``), ``module.`` stripped."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code with UnpicklingError
        raise CheckpointError(f"{path}: refused to load (only plain tensor state dicts are accepted): {exc}") from exc
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_official(path: Path, arch: str | None, widths: tuple[float, ...] | None) -> Checkpoint:
    state = read_official_state_dict(path)
    net = _infer_official_net(state, arch, widths, path)
    _load_state_strict(net, state, path)
    if isinstance(net, UniversalNet):
        # The official files do not say which slots were calibrated; a slot still at its initial
        # statistics (mean 0, variance 1 everywhere) never was.
        net.calibrated = net.slots_with_statistics()
    # No accuracy: these weights may be fine-tuned or another data set's, so the paper's figures would be
    # a guess (convert --accuracy official states it explicitly; evaluate --out measures it).
    labels = imagenet1k_labels() if net.num_classes == len(imagenet1k_labels()) else None
    card = ModelCard.for_net(net, mean=IMAGENET_MEAN, std=IMAGENET_STD, labels=labels, source="official")
    return Checkpoint(net, card)


def _infer_official_net(state: dict, arch: str | None, widths: tuple[float, ...] | None, path: Path) -> SlimmableNet:
    if "classifier.0.weight" not in state:
        raise CheckpointError(f"{path}: missing key 'classifier.0.weight'; not a slimmable network checkpoint")
    num_classes = state["classifier.0.weight"].shape[0]
    candidates = [arch] if arch else list_models()
    for name in candidates:
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if widths:
            kwargs["widths"] = widths
        if arch is None:
            with torch.device("meta"):
                probe = create(name, **kwargs)
            if not _same_layout(probe.state_dict(), state):
                continue
        return create(name, **kwargs)
    raise CheckpointError(
        f"{path}: state-dict layout matches no registered architecture ({', '.join(candidates)}); pass arch and widths"
    )


def _same_layout(expected: dict, state: dict) -> bool:
    keys = {k for k in expected if not k.endswith("num_batches_tracked")}
    got = {k for k in state if not k.endswith("num_batches_tracked")}
    return keys == got and all(tuple(expected[k].shape) == tuple(state[k].shape) for k in keys)


def _load_state_strict(net: SlimmableNet, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Strict load with errors that name the key; ``num_batches_tracked`` may be absent."""
    expected = net.state_dict()
    for key, ref in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            raise CheckpointError(f"{path}: missing key {key!r}")
        tensor = state[key]
        if tuple(tensor.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: shape mismatch for key {key!r}: checkpoint {list(tensor.shape)}, model {list(ref.shape)}"
            )
        if tensor.dtype != ref.dtype:
            raise CheckpointError(f"{path}: key {key!r} is {str(tensor.dtype).removeprefix('torch.')}, "
                                  f"the model needs {str(ref.dtype).removeprefix('torch.')}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: key {key!r} holds NaN or infinite values")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]!r} (and {len(unexpected) - 1} more)")
    full = {k: state.get(k, v) for k, v in expected.items()}
    net.load_state_dict(full, strict=True)

