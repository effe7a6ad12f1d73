"""Image decoding cost per request: full JPEG decode vs ``--jpeg-draft on`` (libjpeg DCT scaling).

Photo-like JPEGs (smooth content, quality 90) of common sizes, decoded and
preprocessed exactly as ``/v1/classify`` does (decode, resize the shorter side,
center crop, normalise) to 224x224. Variants interleaved; medians. Also
reports how far the draft pixels are from the full decode (normalised units).

    python -m bench.decode --out out/decode [--repeats 30]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from server.api.codecs import decode_image

SIZES = ((224, 224), (640, 480), (1280, 720), (1920, 1080), (4032, 3024))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo_jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(width)
    small = Image.fromarray((rng.random((max(2, height // 16), max(2, width // 16), 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    small.resize((width, height), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.decode", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("out/decode"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = {f"{w}x{h}": photo_jpeg(w, h) for w, h in SIZES}
    decode = {
        "full": lambda data: decode_image(data, "image/jpeg", 1 << 26, 224, MEAN, STD, 3),
        "draft": lambda data: decode_image(data, "image/jpeg", 1 << 26, 224, MEAN, STD, 3, jpeg_draft=True),
    }
    times: dict[tuple[str, str], list[float]] = {}
    calls = [(size, variant) for size in images for variant in decode]
    rng = random.Random(0)
    for _ in range(args.repeats):
        rng.shuffle(calls)
        for size, variant in calls:
            start = time.perf_counter()
            decode[variant](images[size])
            times.setdefault((size, variant), []).append((time.perf_counter() - start) * 1e3)
    rows = []
    print(f"decode + preprocess to 224x224, median ms of {args.repeats}")
    print(
        f"{'image':>10} {'JPEG KB':>8} {'full ms':>8} {'draft ms':>9} {'speed-up':>9} {'mean |diff|':>12} "
        f"{'max |diff|':>11}"
    )
    for size, data in images.items():
        full, draft = decode["full"](data), decode["draft"](data)
        diff = (full - draft).abs()
        row = {"image": size, "jpeg_bytes": len(data), "full_ms": statistics.median(times[(size, "full")]),
               "draft_ms": statistics.median(times[(size, "draft")]), "mean_abs_diff": float(diff.mean()),
               "max_abs_diff": float(diff.max())}
        row["speedup"] = row["full_ms"] / row["draft_ms"]
        rows.append(row)
        print(
            f"{size:>10} {len(data) // 1024:>8} {row['full_ms']:>8.2f} {row['draft_ms']:>9.2f} {row['speedup']:>8.2f}x "
            f"{row['mean_abs_diff']:>12.4f} {row['max_abs_diff']:>11.4f}"
        )
    (args.out / "decode.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    print(f"wrote {args.out / 'decode.json'}")


if __name__ == "__main__":
    main()
