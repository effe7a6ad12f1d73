"""Does ``simulate`` predict the live server? The same profile, settings, policy, arrivals and
budget, live (server pinned to core 0, client on core 1, binary v2 tensors) and simulated, with
the server's measured per-request CPU (``/v1/models`` ``request_cpu_ms``) and without it.

    python -m bench.sim_vs_live --out out/sim_vs_live [--policy max-width] [--loads 0.5,1,2] [--duration 8]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx2

from bench.common import imagenet_checkpoint, live_server
from bench.load import measure_point, v2_request
from policies import LatencyProfile, make_policy
from policies.simulator import arrival_times, simulate
from server.settings import Settings

SEED = 11  # bench.load's arrivals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="max-width")
    parser.add_argument("--loads", default="0.5,1,2")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("out/sim_vs_live"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint("s_mobilenet_v2")
    profile_path = args.out / "profile.json"
    flags = ["--checkpoint", str(checkpoint), "--model-name", "v2", "--threads", "1", "--policy", args.policy]
    os.sched_setaffinity(0, {1})
    path, body, headers = v2_request()
    settings = Settings(policy=args.policy, threads=1)  # serve's defaults for everything else, as live
    rows = []
    with live_server(*flags, "--save-profile", str(profile_path), cpus={0}) as url:
        model = httpx2.get(url + "/v1/models").json()["models"][0]
        accuracy = {w["width"]: w["expected_accuracy"] for w in model["widths"]}
        profile = LatencyProfile.load(profile_path)
        widest_b1 = profile.predict(profile.widths[-1], 1)
        budget_s = 3 * widest_b1
        capacity = 1 / widest_b1
        for load in (float(x) for x in args.loads.split(",")):
            rate = load * capacity
            live = measure_point(url + path, body, rate, args.duration, budget_s * 1e3, accuracy, headers=headers)
            cpu_ms = httpx2.get(url + "/v1/models").json()["models"][0]["request_cpu_ms"] or 0.0
            arrivals = arrival_times("poisson", rate, args.duration, seed=SEED)
            sims = {}
            for name, cpu_s in (("sim", 0.0), ("sim+cpu", cpu_ms / 1e3)):
                result = simulate(profile, make_policy(args.policy, profile.widths, accuracy), arrivals, budget_s, accuracy,
                                  settings.scheduler_config(), noise=0.05, seed=SEED, request_cpu_s=cpu_s)
                sims[name] = result.as_dict()
            row = {"load": load, "rate": rate, "request_cpu_ms": cpu_ms, "live": live, **sims}
            rows.append(row)
            print(f"{load:.1f}x ({rate:.0f} req/s, request CPU {cpu_ms:.2f} ms): attainment live "
                  f"{live['attainment']:.3f}, sim {sims['sim']['attainment']:.3f}, sim+cpu "
                  f"{sims['sim+cpu']['attainment']:.3f}; top-1 per answer live {live['mean_accuracy'] or 0:.3f}, "
                  f"sim {sims['sim']['mean_accuracy'] or 0:.3f}, sim+cpu {sims['sim+cpu']['mean_accuracy'] or 0:.3f}")
            time.sleep(1.0)
    (args.out / "sim_vs_live.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "policy": args.policy, "budget_ms": budget_s * 1e3, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
