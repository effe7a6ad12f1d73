"""How should max-width plan for a drifting device? Replayed on measured device-speed traces.

max-width plans each batch for a quantile of the recent observed / predicted batch times
(``tail_quantile``) and can weigh each plan by its chance of ending in time (``weigh_risk``). Live
A/Bs on a VM whose speed drifts cannot resolve a change of a few thousandths, but ``simulate`` with a
device-speed trace measured by ``bench.sim_vs_live`` reproduces the live server within 0.02
(BENCHMARKS.md, "Session 11"). This program replays every trace it is given (each run's 0.5x, 1x and
2x) through each max-width variant (``--variants``; ``slack`` and ``slack+lone`` run the slack policy),
for a width grid and for four widths of the same profile, at several budgets and arrival seeds, and
prints attainment / top-1 per request sent per cell and on average. Writes JSON.

    R=bench/results; python -m bench.tail_quantile --profile $R/us_grid_s11_profile.json \\
        --accuracy $R/us_grid_sim_s11.json --out out/tail_quantile \\
        --traces $R/sim_vs_live_s11/run3,$R/sim_vs_live_s11/run4,$R/sim_vs_live_s11/run5,$R/sim_vs_live_s11/run6
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from policies import LatencyProfile
from policies.adaptive import SlackPolicy
from policies.builtin import ARRIVAL_BURST_Z, MaxWidthPolicy
from policies.simulator import SpeedTrace, arrival_times, simulate
from server.settings import Settings

FOUR = (0.35, 0.5, 0.75, 1.0)
TRACES = (("0.5", "speed_0.5x.json"), ("1", "speed_1x.json"), ("2", "speed_2x.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True, help="a grid's latency profile (bench.us_grid's profile.json)")
    parser.add_argument("--accuracy", type=Path, required=True, help="bench.us_grid's JSON: top-1 per width")
    parser.add_argument("--traces", required=True, help="comma-separated bench.sim_vs_live output folders")
    parser.add_argument("--variants", default="p95,p95+risk",
                        help="max-width plans to compare: pQ plans for quantile Q of recent batch times, +risk "
                             "also weighs each plan by its chance of ending in time, +burstZ sizes the arrivals "
                             "during a plan Z standard deviations above the mean, with their request CPU "
                             "(default: the server's), +mean by their mean count alone (before session 14), +strict "
                             "keeps unsustainable widths from a lone request too (before session 14), +shrink lets "
                             "the tail shrink batches at the narrowest width too (before session 15); slack and "
                             "slack+lone run the slack policy (+lone: a lone request may use all of the core)")
    parser.add_argument("--learning", default="speed",
                        help="how the server's profile learns from batches, compared: speed (a device speed shared "
                             "by every width, and each entry's own difference) and/or entry (only the entry that ran)")
    parser.add_argument("--budgets", default="3,6", help="multiples of the widest batch-1 time")
    parser.add_argument("--seeds", default="11,12,13")
    parser.add_argument("--request-cpu-ms", type=float, default=1.5)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("out/tail_quantile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    grid = LatencyProfile.load(args.profile)
    four = grid.at_widths(FOUR)
    top1 = {float(w): a for w, a in json.loads(args.accuracy.read_text())["top1"].items()}
    widest = grid.predict(grid.widths[-1], 1)
    if not set(args.learning.split(",")) <= {"speed", "entry"}:
        raise SystemExit(f"--learning {args.learning!r}: expected speed, entry or both (comma-separated)")
    variants = [f"{variant}/{learning}" if "," in args.learning else variant
                for variant in args.variants.split(",") for learning in args.learning.split(",")]
    rows = []
    for folder in (Path(f) for f in args.traces.split(",")):
        for load, name in TRACES:
            speed = SpeedTrace.load(folder / name)
            for budget in (float(b) for b in args.budgets.split(",")):
                cells = []
                for label, measured in (("grid", grid), ("4 widths", four)):
                    accuracy = {w: top1[w] for w in measured.widths}
                    for variant in variants:
                        policy_variant, _, learning = variant.partition("/")
                        profile = measured.copy()  # simulate's server copies this one, learning as it says
                        profile.learn_speed = (learning or args.learning) == "speed"
                        runs = [simulate(profile, variant_policy(policy_variant, accuracy),
                                         arrival_times("poisson", float(load) / widest, args.duration, seed=seed),
                                         budget * widest, accuracy, Settings().scheduler_config(), noise=0.05, seed=seed,
                                         request_cpu_s=args.request_cpu_ms / 1e3, speed=speed)
                                for seed in (int(s) for s in args.seeds.split(","))]
                        row = {"trace": str(folder), "load": float(load), "budget": budget, "widths": label,
                               "variant": variant, "attainment": statistics.fmean(r.attainment for r in runs),
                               "accuracy_per_sent": statistics.fmean(r.attainment * (r.mean_accuracy or 0.0) for r in runs)}
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
    (args.out / "tail_quantile.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print(f"wrote {args.out / 'tail_quantile.json'}")


def variant_policy(variant: str, accuracy: dict[float, float]) -> MaxWidthPolicy | SlackPolicy:
    """``p95``, ``p95+risk``, ``p95+risk+burst1.28``, ``p95+risk+mean``, ``p95+risk+strict``,
    ``p95+risk+shrink`` (see --variants) as a policy; ``slack`` and ``slack+lone`` as the slack policy
    (``+lone``: a lone request may use all of the core)."""
    if variant.split("+")[0] == "slack":
        options = variant.split("+")[1:]
        if any(o != "lone" for o in options):
            raise SystemExit(f"variant {variant!r}: expected slack or slack+lone")
        return SlackPolicy(lone_full_core="lone" in options)
    quantile, *options = variant.split("+")
    if not quantile.startswith("p") or any(o not in ("risk", "mean", "strict", "shrink") and not o.startswith("burst")
                                           for o in options):
        raise SystemExit(f"variant {variant!r}: expected pQ[+risk][+burstZ|+mean][+strict][+shrink], e.g. p95+risk+burst1.28")
    burst_z = ARRIVAL_BURST_Z  # the server's
    for option in options:
        if option == "mean":
            burst_z = None
        elif option.startswith("burst"):
            burst_z = float(option[5:])
    return MaxWidthPolicy(accuracy, tail_quantile=float(quantile[1:]) / 100, weigh_risk="risk" in options,
                          burst_z=burst_z, idle_wide="strict" not in options,
                          tail_narrows_only="shrink" not in options)


if __name__ == "__main__":
    main()
