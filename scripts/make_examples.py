"""Write one example PNG per digit from the embedded model's held-out data, for the README's curls.

Each is a digits-hard image (16x16: a shifted, scaled, rotated digit over a fainter distractor and
noise) from the held-out split, never seen in training: for each class, the first one that the
embedded model classifies correctly at every width, so the README's examples answer the same at
any load.

Usage: python scripts/make_examples.py --out examples
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import models
from models.checkpoint import DEFAULT_CHECKPOINT
from models.training.data import HARD_COPIES, HARD_SEEDS, digits_images, hard_digit_images, held_out_split
from models.transforms import image_to_tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = models.load_checkpoint(DEFAULT_CHECKPOINT)
    net, spec = checkpoint.net, checkpoint.card.input
    images, targets = digits_images()
    _, val_idx = held_out_split(len(images), 0.2)
    hard, source = hard_digit_images([images[i] for i in val_idx], HARD_COPIES["val"], HARD_SEEDS["val"])
    labels = targets[val_idx][source]
    written = set()
    for image, label in zip(hard, labels):
        label = int(label)
        if label in written:
            continue
        x = image_to_tensor(image, spec.size, spec.mean, spec.std, spec.channels)[None]
        with torch.inference_mode():
            if all(int(net(x, width=w).argmax()) == label for w in net.widths):
                image.save(args.out / f"digit_{label}.png")
                written.add(label)
    print(f"wrote {len(written)} PNGs to {args.out} (digits-hard held-out split)")


if __name__ == "__main__":
    main()
