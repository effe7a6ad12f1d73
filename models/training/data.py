"""In-memory image classification data: scikit-learn's digits, or an ImageFolder-style tree.

Both paths go through :func:`models.transforms.image_to_tensor`, the same
preprocessing the server applies, so a served PNG is seen as in training.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..transforms import image_to_tensor

__all__ = [
    "Dataset",
    "load_dataset",
    "digits_images",
    "hard_digit_images",
    "held_out_split",
    "DIGITS_MEAN",
    "DIGITS_STD",
]

DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
SPLIT_SEED = 0  # the held-out split never depends on the training seed


@dataclass(frozen=True)
class Dataset:
    """Preprocessed train/val tensors plus what a checkpoint needs to serve them."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    labels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def digits_images() -> tuple[list[Image.Image], np.ndarray]:
    """scikit-learn's 1,797 handwritten 8x8 digits (shipped with the package) as grayscale PIL images."""
    images, targets = _digits_arrays()
    pixels = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    return [Image.fromarray(p, mode="L") for p in pixels], targets.astype(np.int64)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``load_digits`` gives them (8x8 values 0-16, targets). Read from the package's CSV
    directly when it is where scikit-learn keeps it: importing scikit-learn costs every command that
    trains or measures 1.3 s, ten times the read."""
    package = importlib.util.find_spec("sklearn")
    csv = Path(package.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if package else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


HARD_SIZE = 16  # digits-hard images are 16x16
HARD_COPIES = {"train": 6, "val": 4}  # augmented copies of each source digit per split
HARD_SEEDS = {"train": 1, "val": 2}  # fixed: the data set never depends on the training seed


@functools.lru_cache(maxsize=4)
def _digits_split(spec: str, val_fraction: float, with_train: bool) -> tuple[tuple[Image.Image, ...], np.ndarray,
                                                                             tuple[Image.Image, ...], np.ndarray]:
    """The images and targets of each split (no training images unless ``with_train``); kept because
    making digits-hard takes seconds and one process (a test session) loads it more than once.
    Read-only to callers."""
    images, targets = digits_images()
    train_idx, val_idx = held_out_split(len(images), val_fraction)
    train_images, val_images = [images[i] for i in train_idx], [images[i] for i in val_idx]
    y_train, y_val = targets[train_idx], targets[val_idx]
    if not with_train:
        train_images, y_train = [], y_train[:0]
    elif spec == "digits-hard":  # variants of each split's own digits: no held-out digit is seen in training
        train_images, source = hard_digit_images(train_images, HARD_COPIES["train"], HARD_SEEDS["train"])
        y_train = y_train[source]
    if spec == "digits-hard":
        val_images, source = hard_digit_images(val_images, HARD_COPIES["val"], HARD_SEEDS["val"])
        y_val = y_val[source]
    y_train.setflags(write=False)
    y_val.setflags(write=False)
    return tuple(train_images), y_train, tuple(val_images), y_val


def hard_digit_images(images: list[Image.Image], copies: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """``copies`` harder 16x16 variants of each 8x8 digit, and the index of the digit each came from.

    Each variant is the digit scaled to 9-15 px, rotated up to 25 degrees and placed off-centre
    (partly cut off at times), over a fainter distractor digit and strong pixel noise: a task on
    which narrow switches lose accuracy, so the embedded model shows what serving narrower costs.
    """
    rng = np.random.default_rng(seed)
    out, source = [], []
    for index, image in enumerate(images):
        for _ in range(copies):
            canvas = np.zeros((HARD_SIZE, HARD_SIZE), np.float32)
            distractor = images[int(rng.integers(len(images)))]
            for digit, weight in ((distractor, rng.uniform(0.25, 0.5)), (image, 1.0)):
                side = int(rng.integers(9, 16))
                glyph = digit.resize((side, side), Image.BILINEAR).rotate(rng.uniform(-25, 25), Image.BILINEAR)
                x, y = (int(v) for v in rng.integers(-2, HARD_SIZE - side + 3, size=2))
                layer = Image.new("L", (HARD_SIZE, HARD_SIZE))
                layer.paste(glyph, (x, y))
                canvas = np.maximum(canvas, weight * np.asarray(layer, np.float32))
            canvas += rng.normal(0.0, 60.0, canvas.shape)
            out.append(Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), mode="L"))
            source.append(index)
    return out, np.asarray(source)


def held_out_split(n: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, val) index arrays; the permutation depends only on ``n`` and ``SPLIT_SEED``."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _to_tensors(images: list[Image.Image], size: int, mean, std, channels: int) -> torch.Tensor:
    if not images:
        return torch.empty(0, channels, size, size)
    return torch.stack([image_to_tensor(im, size, mean, std, channels) for im in images])


def _folder_images(root: Path) -> tuple[list[Image.Image], np.ndarray, tuple[str, ...]]:
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders")
    images, targets = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as im:
                    images.append(im.copy())
                targets.append(label)
    return images, np.asarray(targets, dtype=np.int64), classes


def load_dataset(
    spec: str, input_size: int, channels: int = 3, val_fraction: float = 0.2, mean=None, std=None,
    with_train: bool = True,
) -> Dataset:
    """Load ``"digits"``, ``"digits-hard"`` (see :func:`hard_digit_images`) or a folder.

    A folder either holds ``train/`` and ``val/`` trees of class sub-folders, or
    class sub-folders directly (then a fixed ``val_fraction`` is held out). Without ``with_train``
    the training split is empty (what measuring on the held-out split needs, in less time).
    """
    mean = tuple(mean or DIGITS_MEAN[:channels])
    std = tuple(std or DIGITS_STD[:channels])
    if spec in ("digits", "digits-hard"):
        train_images, y_train, val_images, y_val = _digits_split(spec, val_fraction, with_train)
        labels = tuple(str(i) for i in range(10))
        name = spec
    else:
        root = Path(spec)
        if not root.is_dir():
            raise ValueError(f"dataset {spec!r} is neither 'digits', 'digits-hard' nor a directory")
        if (root / "train").is_dir() and (root / "val").is_dir():
            train_images, y_train, labels = _folder_images(root / "train")
            val_images, y_val, val_labels = _folder_images(root / "val")
            if val_labels != labels:
                raise ValueError(f"{root}: train and val have different classes")
        else:
            images, targets, labels = _folder_images(root)
            train_idx, val_idx = held_out_split(len(images), val_fraction)
            train_images, val_images = [images[i] for i in train_idx], [images[i] for i in val_idx]
            y_train, y_val = targets[train_idx], targets[val_idx]
        name = str(root)
    if not with_train:
        train_images, y_train = [], np.asarray(y_train)[:0]
    return Dataset(
        name=name,
        x_train=_to_tensors(train_images, input_size, mean, std, channels),
        y_train=torch.from_numpy(np.array(y_train)),  # a copy: the cached targets are read-only
        x_val=_to_tensors(val_images, input_size, mean, std, channels),
        y_val=torch.from_numpy(np.array(y_val)),
        labels=labels,
        mean=mean,
        std=std,
    )
