"""max-width's tuned numbers, replayed on measured device-speed traces.

Live A/Bs on a VM whose speed drifts cannot resolve a change of a few thousandths, but ``simulate``
with a device-speed trace measured by ``bench.sim_vs_live`` reproduces the live server closely
(BENCHMARKS.md, "Simulation against the live server"). This program replays every trace it is given
(each run's 0.5x, 1x and 2x) through max-width with each ``--variants`` tuning (``server``: the
server's :data:`policies.tuning.TUNING`; ``NAME=VALUE[+NAME=VALUE]`` overrides fields of it, e.g.
``tail_quantile=0.9`` or ``arrival_burst_z=0``; ``slack`` runs the slack policy), for a width grid and
for four widths of the same profile, at several budgets and arrival seeds, and prints attainment / top-1
per request sent per cell and on average. Writes JSON. A rule rather than a number is compared by
running this program in a worktree of the commit that had it.

    R=bench/results; python -m bench.tuning --profile $R/us_grid_profile.json --accuracy $R/us_grid_sim.json \\
        --traces $R/sim_vs_live --variants server,tail_quantile=0.9 --out out/tuning
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Sequence

from policies import LatencyProfile
from policies.adaptive import SlackPolicy
from policies.builtin import MaxWidthPolicy
from policies.simulator import SpeedTrace, arrival_times, simulate
from policies.tuning import TUNING, Tuning
from server.settings import Settings

FOUR = (0.35, 0.5, 0.75, 1.0)
TRACES = (("0.5", "speed_0.5x.json"), ("1", "speed_1x.json"), ("2", "speed_2x.json"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.tuning", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True, help="a grid's latency profile (bench.us_grid's)")
    parser.add_argument("--accuracy", type=Path, required=True, help="bench.us_grid's JSON: top-1 per width")
    parser.add_argument("--traces", required=True, help="comma-separated bench.sim_vs_live output folders")
    parser.add_argument(
        "--variants",
        default="server,tail_quantile=0.9",
        help="comma-separated: server, slack, or NAME=VALUE[+NAME=VALUE] fields of policies.tuning.Tuning",
    )
    parser.add_argument("--budgets", default="3,6", help="multiples of the widest batch-1 time")
    parser.add_argument("--seeds", default="11,12,13")
    parser.add_argument("--request-cpu-ms", type=float, default=1.5)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("out/tuning"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    grid = LatencyProfile.load(args.profile)
    four = grid.at_widths(FOUR)
    top1 = {float(w): a for w, a in json.loads(args.accuracy.read_text())["top1"].items()}
    widest = grid.predict(grid.widths[-1], 1)
    variants = args.variants.split(",")
    for variant in variants:
        variant_policy(variant, {})  # refuse a bad variant before replaying anything
    rows = []
    for folder in (Path(f) for f in args.traces.split(",")):
        for load, name in TRACES:
            speed = SpeedTrace.load(folder / name)
            for budget in (float(b) for b in args.budgets.split(",")):
                cells = []
                for label, measured in (("grid", grid), ("4 widths", four)):
                    accuracy = {w: top1[w] for w in measured.widths}
                    for variant in variants:
                        runs = [simulate(measured, variant_policy(variant, accuracy),
                                         arrival_times("poisson", float(load) / widest, args.duration, seed=seed),
                                         budget * widest, accuracy, Settings().scheduler_config(), noise=0.05,
                                         seed=seed, request_cpu_s=args.request_cpu_ms / 1e3, speed=speed)
                                for seed in (int(s) for s in args.seeds.split(","))]
                        row = {"trace": str(folder), "load": float(load), "budget": budget, "widths": label,
                               "variant": variant, "attainment": statistics.fmean(r.attainment for r in runs),
                               "accuracy_per_sent": statistics.fmean(r.attainment * (r.mean_accuracy or 0.0)
                                                                     for r in runs)}
                        rows.append(row)
                        cells.append(f"{label} {variant} {row['attainment']:.3f}/{row['accuracy_per_sent']:.3f}")
                print(f"{folder.name} {load}x, budget {budget:g}x: " + "  ".join(cells), flush=True)
    print()
    for label in ("grid", "4 widths"):
        for variant in variants:
            mine = [r for r in rows if r["widths"] == label and r["variant"] == variant]
            print(f"{label:>8} {variant}: mean attainment {statistics.fmean(r['attainment'] for r in mine):.4f}, "
                  f"mean top-1 per sent {statistics.fmean(r['accuracy_per_sent'] for r in mine):.4f}, "
                  f"lowest attainment {min(r['attainment'] for r in mine):.3f}")
    (args.out / "tuning.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print(f"wrote {args.out / 'tuning.json'}")


def variant_tuning(variant: str) -> Tuning:
    """``server`` -> the server's tuning; ``tail_quantile=0.9+arrival_burst_z=0`` -> it with those fields."""
    if variant == "server":
        return TUNING
    fields = {f.name for f in dataclasses.fields(Tuning)}
    changes = {}
    for part in variant.split("+"):
        name, sep, value = part.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"variant {variant!r}: expected server, slack or NAME=VALUE[+NAME=VALUE] with NAME one "
                             f"of {', '.join(sorted(fields))}")
        try:
            changes[name] = float(value)
        except ValueError:
            raise SystemExit(f"variant {variant!r}: {value!r} is not a number") from None
    return dataclasses.replace(TUNING, **changes)


def variant_policy(variant: str, accuracy: dict[float, float]) -> MaxWidthPolicy | SlackPolicy:
    """The policy a ``--variants`` entry names."""
    if variant == "slack":
        return SlackPolicy()
    return MaxWidthPolicy(accuracy, variant_tuning(variant))


if __name__ == "__main__":
    main()
