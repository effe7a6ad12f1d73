"""CPU the scheduler and max-width spend per request: a width grid vs four widths, this tree vs a baseline.

On one shared core every decision is time taken from the batches (the inference thread makes
them between batches). This program times ``simulate`` -- which drives the real scheduler and the
real policy, and little else -- on a grid's latency profile and on four of its widths at several
loads, as process CPU per simulated request (best of ``--repeats``). With ``--baseline``, the same
measurement runs in a worktree of that commit (this file copied in), alternating with this tree
``--rounds`` times, pinned to one core.

    python -m bench.decision_cpu --profile bench/results/us_grid_profile.json --baseline 2ed0cc3 --out
    out/decision_cpu
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

FOUR = (0.35, 0.5, 0.75, 1.0)
LOADS = (0.5, 1.0, 1.5)


def measure(profile_path: Path, repeats: int, duration: float) -> dict[str, float]:
    """{"<widths> widths <load>x": ms of CPU per simulated request} for the tree this module is imported from."""
    from policies import LatencyProfile, make_policy
    from policies.simulator import arrival_times, simulate
    from server.settings import Settings

    grid = LatencyProfile.load(profile_path)
    # not grid.at_widths(FOUR): this file also runs in baseline worktrees whose profile lacks it
    four = LatencyProfile({w: {b: grid.predict(w, b) for b in (1, 2, 4, 8)} for w in grid.widths if w in FOUR})
    out = {}
    for profile in (grid, four):
        accuracy = {w: 0.6 + 0.1 * w for w in profile.widths}  # increasing: max-width values width
        widest = profile.predict(profile.widths[-1], 1)
        for load in LOADS:
            arrivals = arrival_times("poisson", load / widest, duration, seed=11)
            best = float("inf")
            for _ in range(repeats):
                began = time.process_time()
                simulate(profile, make_policy("max-width", profile.widths, accuracy), arrivals, 3 * widest, accuracy,
                         Settings().scheduler_config(), noise=0.05, seed=11, request_cpu_s=0.0012)
                best = min(best, time.process_time() - began)
            out[f"{len(profile.widths)} widths {load:g}x"] = best / len(arrivals) * 1e3
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.decision_cpu", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile", type=Path, required=True, help="a width grid's latency profile (bench.us_grid writes one)"
    )
    parser.add_argument("--baseline", default=None, help="commit (or ref) to compare this tree against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="simulated seconds per load")
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)  # one measurement, for the baseline
    parser.add_argument("--out", type=Path, default=Path("out/decision_cpu"))
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.core})
    if args.json_only:
        print(json.dumps(measure(args.profile, args.repeats, args.duration)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    from bench.overhead_ab import worktree

    results: dict[str, list[dict[str, float]]] = {"this tree": []}
    with worktree(args.baseline) if args.baseline else contextlib.nullcontext() as base:
        if base is not None:
            shutil.copy(Path(__file__), base / "bench" / "decision_cpu.py")
            results[args.baseline] = []
        for _ in range(args.rounds):
            results["this tree"].append(measure(args.profile, args.repeats, args.duration))
            if base is not None:
                run = subprocess.run([sys.executable, "-m", "bench.decision_cpu", "--json-only", "--profile",
                                      str(args.profile.resolve()), "--repeats", str(args.repeats), "--duration",
                                      str(args.duration), "--core", str(args.core)],
                                     cwd=base, check=True, capture_output=True, text=True)
                results[args.baseline].append(json.loads(run.stdout.strip().splitlines()[-1]))
    cells = list(results["this tree"][0])
    print(f"ms of CPU per simulated request (scheduler + max-width), median of {args.rounds} rounds, core {args.core}")
    print(f"{'':>18}" + "".join(f"{name:>14}" for name in results))
    summary = {}
    for cell in cells:
        medians = {name: statistics.median(r[cell] for r in rounds) for name, rounds in results.items()}
        summary[cell] = medians
        print(f"{cell:>18}" + "".join(f"{v:>14.3f}" for v in medians.values()))
    (args.out / "decision_cpu.json").write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "profile": str(args.profile), "rounds": results, "medians": summary},
            indent=2,
        )
    )
    print(f"wrote {args.out / 'decision_cpu.json'}")


if __name__ == "__main__":
    main()
