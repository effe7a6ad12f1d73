"""Headline benchmark of the budget policies, simulated on this machine's measured profile.

S-MobileNet v2 at 224x224, budget = 3x the widest width's batch-1 latency,
Poisson load from 0.5x the widest width's capacity up to the narrowest
width's capacity. For every load and policy: deadline attainment and mean
expected accuracy (the paper's ImageNet top-1 per width). Prints a table,
checks the headline criteria and writes JSON + PNG.

    python -m bench.policy_sim --out out/policy_sim            # measure the profile here
    python -m bench.policy_sim --profile p.json --out out/x    # or reuse a saved one
    python -m bench.policy_sim --profile p.json --request-cpu-ms 2 --out out/x  # HTTP on the model's core
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Sequence

import models
from models.checkpoint import OFFICIAL_TOP1
from policies import LatencyProfile, batch_sizes_up_to, make_policy
from policies.simulator import arrival_times, simulate
from server.runtime import Runtime, profile_runtime
from server.settings import Settings

ADAPTIVE = ("max-width", "slack", "feedback")


def capacity(profile: LatencyProfile, width: float, max_batch: int) -> float:
    """Requests per second the device sustains at ``width`` with its best batch size."""
    return max(b / profile.predict(width, b) for b in batch_sizes_up_to(max_batch))


def load_or_measure(args) -> LatencyProfile:
    if args.profile:
        return LatencyProfile.load(args.profile)
    net = models.create(args.arch)
    runtime = Runtime(net, "cpu")
    runtime.warm_up(batch_sizes_up_to(args.max_batch_size))
    profile = profile_runtime(runtime, batch_sizes_up_to(args.max_batch_size), repeats=args.repeats)
    return profile


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.policy_sim", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="latency profile JSON (default: measure S-MobileNet v2 here)")
    parser.add_argument("--arch", default="s_mobilenet_v2")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0, help="simulated seconds per point")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument(
        "--request-cpu-ms",
        type=float,
        default=0.0,
        help="the server's own CPU per request on the model's cores (serve's /v1/models request_cpu_ms; "
        "0: it has cores of its own)",
    )
    parser.add_argument("--out", type=Path, default=Path("out/policy_sim"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    profile = load_or_measure(args)
    profile.save(args.out / "profile.json")
    widths = profile.widths
    accuracy = OFFICIAL_TOP1[args.arch]
    budget = 3 * profile.predict(widths[-1], 1)
    cap_wide, cap_narrow = (
        capacity(profile, widths[-1], args.max_batch_size),
        capacity(profile, widths[0], args.max_batch_size),
    )
    limit = cap_narrow / cap_wide
    multipliers = [m for m in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0) if m <= limit + 1e-9]
    if multipliers[-1] < limit - 0.05:
        multipliers.append(round(limit, 2))
    policies = [f"fixed:{w:g}" for w in widths] + list(ADAPTIVE)

    print(f"profile: batch-1 ms {[round(profile.predict(w, 1) * 1e3, 2) for w in widths]}, "
          f"budget {budget * 1e3:.2f} ms, capacity {cap_wide:.0f} (widest) .. {cap_narrow:.0f} (narrowest) req/s")
    rows = []
    for m in multipliers:
        rate = m * cap_wide
        arrivals = arrival_times("poisson", rate, args.duration, seed=7)
        for name in policies:
            config = Settings(max_batch_size=args.max_batch_size).scheduler_config()  # serve's own defaults
            result = simulate(
                profile,
                make_policy(name, widths, accuracy),
                arrivals,
                budget,
                accuracy,
                config,
                args.noise,
                seed=7,
                request_cpu_s=args.request_cpu_ms / 1e3,
            )
            rows.append({"load": m, "rate": rate, "policy": name, **result.as_dict()})

    header = f"{'load':>5} " + " ".join(f"{p:>15}" for p in policies)
    print("\nattainment / mean expected accuracy (ImageNet top-1 of the served width)")
    print(header)
    for m in multipliers:
        cells = {r["policy"]: r for r in rows if r["load"] == m}
        print(f"{m:>4.2f}x " + " ".join(
            f"{cells[p]['attainment']:>6.3f}/{(cells[p]['mean_accuracy'] or 0):.3f}".rjust(15) for p in policies))

    verdicts = check_headline(rows, multipliers, widths)
    for line in verdicts["lines"]:
        print(line)
    report = {
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "arch": args.arch,
        "budget_ms": budget * 1e3,
        "request_cpu_ms": args.request_cpu_ms,
        "capacity_rps": {"widest": cap_wide, "narrowest": cap_narrow},
        "profile": profile.as_dict(),
        "rows": rows,
        "headline": verdicts,
    }
    (args.out / "policy_sim.json").write_text(json.dumps(report, indent=2))
    plot(rows, policies, args.out / "policy_sim.png", budget)
    print(f"\nwrote {args.out / 'policy_sim.json'} and {args.out / 'policy_sim.png'}")


def check_headline(rows: list[dict], multipliers: list[float], widths) -> dict:
    """The policies issue's criteria, checked for each adaptive policy on its own.

    At every load where some fixed width reaches 99.5% attainment, the policy must
    reach 99%; at every load its mean accuracy must be at least the best fixed width
    that meets 99% there (an oracle that knows the load) minus 1 point.
    """
    lines, passing = [], []
    for name in ADAPTIVE:
        failures = []
        for m in multipliers:
            cells = {r["policy"]: r for r in rows if r["load"] == m}
            fixed = [cells[f"fixed:{w:g}"] for w in widths]
            mine = cells[name]
            if any(f["attainment"] >= 0.995 for f in fixed) and mine["attainment"] < 0.99:
                failures.append(f"{m:g}x attainment {mine['attainment']:.3f} < 0.99")
            oracle = max((f["mean_accuracy"] for f in fixed if f["attainment"] >= 0.99), default=None)
            if oracle is not None and (mine["mean_accuracy"] or 0) < oracle - 0.01:
                failures.append(f"{m:g}x accuracy {mine['mean_accuracy']:.3f} < oracle {oracle:.3f} - 0.01")
        if not failures:
            passing.append(name)
        lines.append(f"{name:>10}: {'meets every criterion' if not failures else 'FAILS ' + '; '.join(failures)}")
    collapse = [r for r in rows if r["policy"] == f"fixed:{widths[-1]:g}" and r["load"] > 1.0]
    collapsed = all(r["attainment"] < 0.9 for r in collapse)
    lines.append(f"fixed:{widths[-1]:g} past 1x: attainment {[round(r['attainment'], 3) for r in collapse]}"
                 f" ({'collapses' if collapsed else 'does not collapse'})")
    return {"policies_meeting_all": passing, "fixed_widest_collapses": collapsed, "lines": lines}


def plot(rows: list[dict], policies: list[str], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in policies:
        pts = [r for r in rows if r["policy"] == name]
        style = "--" if name.startswith("fixed") else "-"
        ax1.plot([r["load"] for r in pts], [r["attainment"] for r in pts], style, marker="o", label=name)
        ax2.plot([r["load"] for r in pts], [r["mean_accuracy"] for r in pts], style, marker="o", label=name)
    ax1.set(xlabel="offered load (x widest width's capacity)", ylabel="deadline attainment", ylim=(0, 1.02),
            title=f"attainment, budget {budget * 1e3:.1f} ms")
    ax2.set(xlabel="offered load (x widest width's capacity)", ylabel="mean expected top-1", title="served accuracy")
    ax1.axhline(0.99, color="grey", lw=0.5)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
