"""Start-up time to ``/readyz``: cold (empty start-up cache) vs warm (a restart with the cache).

``widthwise serve`` on S-MobileNet v2 224x224 (random weights, 4 widths), timed from spawning the
process to the first ``/readyz`` 200, with a start-up cache of its own: cold starts begin with an
empty cache, warm starts reuse what the previous start wrote. Medians of ``--runs`` each, and the
server's resident memory (VmRSS) once it is ready.

    python -m bench.startup --out out/startup [--runs 3] [--arch s_mobilenet_v2]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

from bench.common import imagenet_checkpoint
from bench.memory import resident_mb
from server.testing import LiveServer


def time_to_ready(checkpoint: Path, cache: Path, extra: list[str]) -> tuple[float, float | None, float]:
    """Seconds from spawn to /readyz 200, the engine's own "ready in X s", and the server's MB resident then."""
    began = time.monotonic()
    server = LiveServer("--checkpoint", str(checkpoint), "--model-name", "v2", "--startup-cache", "on",
                        "--cache-dir", str(cache), *extra, env={"WIDTHWISE_STARTUP_CACHE": "on"})
    try:
        server.wait_ready(600)
        elapsed = time.monotonic() - began
        match = re.search(r"ready in ([0-9.]+) s", server.output())
        return elapsed, float(match.group(1)) if match else None, resident_mb(server.proc.pid)
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s_mobilenet_v2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("out/startup"))
    parser.add_argument("extra", nargs="*", help="more `widthwise serve` flags (after --)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint(args.arch)
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            cache = Path(tmp) / f"cache-{run}"
            cold.append(time_to_ready(checkpoint, cache, args.extra))
            warm.append(time_to_ready(checkpoint, cache, args.extra))
            shutil.rmtree(cache, ignore_errors=True)
    rows = []
    print(f"{args.arch} 224x224, {args.runs} runs each; seconds from spawn to /readyz (engine's own 'ready in')")
    for name, values in (("cold", cold), ("warm", warm)):
        row = {"start": name, "to_readyz_s": statistics.median(v for v, _, _ in values),
               "engine_ready_s": statistics.median(e for _, e, _ in values if e is not None),
               "resident_mb": statistics.median(m for _, _, m in values),
               "runs": [v for v, _, _ in values]}
        rows.append(row)
        print(f"{name:>5}: {row['to_readyz_s']:.2f} s ({row['engine_ready_s']:.2f} s in the engine), "
              f"{row['resident_mb']:.0f} MB resident, runs {', '.join(f'{v:.2f}' for v in row['runs'])}")
    (args.out / "startup.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "arch": args.arch,
                                                       "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
