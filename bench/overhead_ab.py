"""Serving overhead, A/B: this tree against another commit or other flags, both servers live at once,
requests interleaved.

Changes to the request path move end-to-end latency by tenths of a
millisecond, less than this machine drifts between runs; so both servers run
side by side and take turns in short shuffled blocks. Reports client-side
total latency (what users see) and the server's ``inference`` time per
request kind. The baseline commit is checked out into a temporary git
worktree.

    python -m bench.overhead_ab --baseline c467a23 --out out/overhead_ab [--rounds 120]
    python -m bench.overhead_ab --serve-args "--weights shared --threads 1" \
        --baseline-args "--weights shared --threads 2" --width 1.0
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.common import REPO, imagenet_checkpoint, server_timing
from bench.overhead import serving_requests
from server.testing import live_server

BLOCK, DISCARD = 12, 2  # requests per block; the first ones of a block pay for switching servers


@contextlib.contextmanager
def server(tree: Path, checkpoint: Path, extra: Sequence[str] = ()):
    with live_server("--checkpoint", str(checkpoint), "--model-name", "v2", "--profile-repeats", "5", *extra,
                     tree=tree) as url:
        yield http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)


@contextlib.contextmanager
def worktree(commit: str | None):
    if commit is None:  # this tree on both sides (flags differ)
        yield REPO
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=REPO, check=True,
                       capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.overhead_ab", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="commit (or ref) to compare this tree against "
                        "(default: this tree, with --baseline-args)")
    parser.add_argument("--serve-args", default="", help="extra serve flags for this tree's server")
    parser.add_argument("--baseline-args", default="", help="extra serve flags for the baseline's server")
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument("--width", default="0.35")
    parser.add_argument("--out", type=Path, default=Path("out/overhead_ab"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint("s_mobilenet_v2")
    requests = serving_requests(args.width)
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with worktree(args.baseline) as base, contextlib.ExitStack() as stack:
        this = " ".join(["this tree", args.serve_args]).strip()
        baseline = " ".join([args.baseline or "this tree", args.baseline_args]).strip()
        if this == baseline:
            parser.error("the two servers are the same: give --baseline or different --baseline-args")
        conns = {this: stack.enter_context(server(REPO, checkpoint, shlex.split(args.serve_args))),
                 baseline: stack.enter_context(server(base, checkpoint, shlex.split(args.baseline_args)))}
        keys = [(tree, kind) for tree in conns for kind in requests]
        rng = random.Random(0)
        for round_ in range(args.rounds):
            rng.shuffle(keys)
            for tree, kind in keys:
                path, body, headers = requests[kind]
                for i in range(BLOCK):
                    start = time.perf_counter()
                    conns[tree].request("POST", path, body=body, headers=headers)
                    response = conns[tree].getresponse()
                    response.read()
                    total = (time.perf_counter() - start) * 1e3
                    if response.status != 200:
                        raise RuntimeError(f"{tree} {kind}: HTTP {response.status}")
                    if round_ >= 2 and i >= DISCARD:
                        engine = server_timing(response.getheader("server-timing"))["inference"]
                        samples.setdefault((kind, tree), []).append((total, engine))
    rows = []
    print(f"median of {len(next(iter(samples.values())))} interleaved requests per cell, width {args.width}")
    print(f"{'request':>22} {'server':>36} {'total ms':>9} {'inference ms':>13} {'total - inference':>18}")
    for (kind, tree), values in sorted(samples.items()):
        a = np.array(values)
        row = {
            "request": kind,
            "server": tree,
            "total_ms": float(np.median(a[:, 0])),
            "inference_ms": float(np.median(a[:, 1])),
            "total_minus_inference_ms": float(np.median(a[:, 0] - a[:, 1])),
        }
        rows.append(row)
        print(f"{kind:>22} {tree:>36} {row['total_ms']:>9.3f} {row['inference_ms']:>13.3f} "
              f"{row['total_minus_inference_ms']:>18.3f}")
    (args.out / "overhead_ab.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "baseline": baseline,
                                                           "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
