"""Which tail quantile should max-width plan for? Replayed on measured device-speed traces.

max-width plans each batch for a quantile of the recent observed / predicted batch times
(``policies.builtin.TAIL_QUANTILE``). Live A/Bs on a VM whose speed drifts cannot resolve a change of
a few thousandths, but ``simulate`` with a device-speed trace measured by ``bench.sim_vs_live``
reproduces the live server within 0.02 (BENCHMARKS.md, "Session 11"). This program replays every
trace it is given (each run's 0.5x, 1x and 2x) through max-width at each quantile, for a width grid
and for four widths of the same profile, at several budgets and arrival seeds, and prints
attainment / top-1 per request sent per cell and on average. Writes JSON.

    R=bench/results; python -m bench.tail_quantile --profile $R/us_grid_s11_profile.json \\
        --accuracy $R/us_grid_sim_s11.json --out out/tail_quantile \\
        --traces $R/sim_vs_live_s11/run3,$R/sim_vs_live_s11/run4,$R/sim_vs_live_s11/run5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from policies import LatencyProfile, builtin, make_policy
from policies.simulator import SpeedTrace, arrival_times, simulate
from server.settings import Settings

FOUR = (0.35, 0.5, 0.75, 1.0)
TRACES = (("0.5", "speed_0.5x.json"), ("1", "speed_1x.json"), ("2", "speed_2x.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True, help="a grid's latency profile (bench.us_grid's profile.json)")
    parser.add_argument("--accuracy", type=Path, required=True, help="bench.us_grid's JSON: top-1 per width")
    parser.add_argument("--traces", required=True, help="comma-separated bench.sim_vs_live output folders")
    parser.add_argument("--quantiles", default="0.9,0.95")
    parser.add_argument("--budgets", default="3,6", help="multiples of the widest batch-1 time")
    parser.add_argument("--seeds", default="11,12,13")
    parser.add_argument("--request-cpu-ms", type=float, default=1.5)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("out/tail_quantile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    grid = LatencyProfile.load(args.profile)
    four = LatencyProfile({w: {b: grid.predict(w, b) for b in (1, 2, 4, 8)} for w in grid.widths if w in FOUR})
    top1 = {float(w): a for w, a in json.loads(args.accuracy.read_text())["top1"].items()}
    widest = grid.predict(grid.widths[-1], 1)
    quantiles = [float(q) for q in args.quantiles.split(",")]
    rows = []
    for folder in (Path(f) for f in args.traces.split(",")):
        for load, name in TRACES:
            speed = SpeedTrace.load(folder / name)
            for budget in (float(b) for b in args.budgets.split(",")):
                cells = []
                for label, profile in (("grid", grid), ("4 widths", four)):
                    accuracy = {w: top1[w] for w in profile.widths}
                    for quantile in quantiles:
                        builtin.TAIL_QUANTILE = quantile  # read by tail_view at each decision
                        runs = [simulate(profile, make_policy("max-width", profile.widths, accuracy),
                                         arrival_times("poisson", float(load) / widest, args.duration, seed=seed),
                                         budget * widest, accuracy, Settings().scheduler_config(), noise=0.05, seed=seed,
                                         request_cpu_s=args.request_cpu_ms / 1e3, speed=speed)
                                for seed in (int(s) for s in args.seeds.split(","))]
                        row = {"trace": str(folder), "load": float(load), "budget": budget, "widths": label,
                               "quantile": quantile, "attainment": statistics.fmean(r.attainment for r in runs),
                               "accuracy_per_sent": statistics.fmean(r.attainment * (r.mean_accuracy or 0.0) for r in runs)}
                        rows.append(row)
                        cells.append(f"{label} p{quantile * 100:g} {row['attainment']:.3f}/{row['accuracy_per_sent']:.3f}")
                print(f"{folder.name} {load}x, budget {budget:g}x: " + "  ".join(cells), flush=True)
    print()
    for label in ("grid", "4 widths"):
        for quantile in quantiles:
            mine = [r for r in rows if r["widths"] == label and r["quantile"] == quantile]
            print(f"{label:>8} p{quantile * 100:g}: mean attainment {statistics.fmean(r['attainment'] for r in mine):.4f}, "
                  f"mean top-1 per sent {statistics.fmean(r['accuracy_per_sent'] for r in mine):.4f}, "
                  f"lowest attainment {min(r['attainment'] for r in mine):.3f}")
    (args.out / "tail_quantile.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print(f"wrote {args.out / 'tail_quantile.json'}")


if __name__ == "__main__":
    main()
