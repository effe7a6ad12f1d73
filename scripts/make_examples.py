"""Write example digit PNGs from scikit-learn's digits (held-out split) for the README's curl examples.

Usage: python scripts/make_examples.py --out examples
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.training.data import SPLIT_SEED, digits_images, held_out_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images, targets = digits_images()
    _, val_idx = held_out_split(len(images), 0.2)
    written = set()
    for i in val_idx:  # one held-out image per class, never seen in training
        label = int(targets[i])
        if label in written:
            continue
        images[i].save(args.out / f"digit_{label}.png")
        written.add(label)
    print(f"wrote {len(written)} PNGs to {args.out} (held-out split, seed {SPLIT_SEED})")


if __name__ == "__main__":
    main()
