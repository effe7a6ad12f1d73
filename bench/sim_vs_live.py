"""Does ``simulate`` predict the live server? The same profile, settings, policy, arrivals and
budget, live (server pinned to core 0, client on core 1, binary v2 tensors) and simulated, with
the server's measured per-request CPU (``/v1/models`` ``request_cpu_ms``) and without it, and
with both that and the device's speed over the live run (``sim+cpu+speed``).

The speed is measured from the live run's own batches (``Server-Timing``: requests of one batch
share its width and inference time): each batch's time, less the request CPU of the arrivals
during it (the simulator adds that itself), over the profile's time for that width and batch
size. On a VM whose speed drifts for seconds at a time (1.5x here) the static profile predicts a
device the live run did not have; replaying its speed separates that from what the simulator
gets wrong about the server itself. Each trace is written beside the results for
``widthwise simulate --speed-trace``.

    python -m bench.sim_vs_live --out out/sim_vs_live [--policy max-width] [--loads 0.5,1,2] [--duration 8]

``--checkpoint`` / ``--widths`` / ``--budget`` run another model, width list or budget (a multiple of
the widest batch-1 time), e.g. a US-MobileNet v2 width grid against its own four widths:

    python -m bench.us_grid --official us_mobilenet_v2 --out out/us_grid  # writes the checkpoint
    python -m bench.sim_vs_live --checkpoint out/us_grid/us_mobilenet_v2_random.safetensors \
        --widths 0.35:1.0:0.05 --out out/sim_vs_live_grid
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import time
from pathlib import Path
from typing import Sequence

import httpx2

from bench.common import imagenet_checkpoint, server_timing
from bench.load import MAX_REQUESTS, measure_point, v2_request
from policies import LatencyProfile, make_policy
from policies.simulator import SpeedTrace, arrival_times, simulate
from server.settings import Settings
from server.testing import live_server

SEED = 11  # bench.load's arrivals


def live_batches(answers: list) -> list[tuple[float, float, int, float]]:
    """``(start s, width, samples, seconds)`` of the live batches behind ``answers`` (bench.load's
    ``(send time, Answer)`` pairs): 200s with the same width and inference time that started within
    a millisecond of each other ran as one batch. Start = send time + input + queue (client clock)."""
    seen: dict[tuple[str, str], list[float]] = {}
    for send_at, answer in answers:
        if answer.status != 200:
            continue
        timing = server_timing(answer.headers.get("server-timing", ""))
        width = answer.headers.get("x-served-width")
        if width is None or "inference" not in timing:
            continue
        start = send_at + (timing.get("input", 0.0) + timing.get("queue", 0.0)) / 1e3
        seen.setdefault((width, f"{timing['inference']:.3f}"), []).append(start)
    batches = []
    for (width, inference), starts in seen.items():
        starts.sort()
        group = [starts[0]]
        for start in starts[1:] + [None]:
            if start is not None and start - group[0] < 1e-3:
                group.append(start)
                continue
            batches.append((group[0], float(width), len(group), float(inference) / 1e3))
            if start is not None:
                group = [start]
    return sorted(batches)


def speed_points(batches: list, sends: list[float], profile: LatencyProfile, request_cpu_s: float) -> list[list[float]]:
    """``[start s, factor]`` per live batch: its time less the request CPU of the arrivals during it,
    over the profile's prediction (never below a fifth of the raw time: a bad estimate must not
    make a batch look free)."""
    sends = sorted(sends)
    points = []
    for start, width, samples, seconds in batches:
        arrived = bisect.bisect_left(sends, start + seconds) - bisect.bisect_right(sends, start)
        device = max(seconds - arrived * request_cpu_s, 0.2 * seconds)
        points.append([round(start, 4), round(device / profile.predict(width, samples), 4)])
    return points


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.sim_vs_live", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="max-width")
    parser.add_argument("--loads", default="0.5,1,2")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: S-MobileNet v2 224, random weights")
    parser.add_argument("--widths", default=None, help="serve's --widths (a list or lo:hi:step)")
    parser.add_argument("--budget", type=float, default=3.0, help="budget, x the widest width's batch-1 time")
    parser.add_argument("--out", type=Path, default=Path("out/sim_vs_live"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or imagenet_checkpoint("s_mobilenet_v2")
    profile_path = args.out / "profile.json"
    flags = ["--checkpoint", str(checkpoint), "--model-name", "v2", "--threads", "1", "--policy", args.policy]
    if args.widths:
        flags += ["--widths", args.widths]
    os.sched_setaffinity(0, {1})
    path, body, headers = v2_request()
    settings = Settings(policy=args.policy, threads=1)  # serve's defaults for everything else, as live
    rows = []
    with live_server(*flags, "--save-profile", str(profile_path), cpus={0}) as url:
        model = httpx2.get(url + "/v1/models").json()["models"][0]
        accuracy = {w["width"]: w["expected_accuracy"] for w in model["widths"]}
        profile = LatencyProfile.load(profile_path)
        widest_b1 = profile.predict(profile.widths[-1], 1)
        budget_s = args.budget * widest_b1
        capacity = 1 / widest_b1
        for load in (float(x) for x in args.loads.split(",")):
            rate = load * capacity
            answers: list = []
            live = measure_point(url + path, body, rate, args.duration, budget_s * 1e3, accuracy, headers=headers,
                                 answers=answers)
            cpu_ms = httpx2.get(url + "/v1/models").json()["models"][0]["request_cpu_ms"] or 0.0
            arrivals = arrival_times("poisson", rate, args.duration, seed=SEED)[:MAX_REQUESTS]  # as live
            points = speed_points(live_batches(answers), [a for a, _ in answers], profile, cpu_ms / 1e3)
            speed = SpeedTrace(points) if points else None
            trace_path = args.out / f"speed_{load:g}x.json"
            trace_path.write_text(json.dumps({"window_s": 0.5, "points": points}))
            sims = {}
            for name, cpu_s, drift in (("sim", 0.0, None), ("sim+cpu", cpu_ms / 1e3, None),
                                       ("sim+cpu+speed", cpu_ms / 1e3, speed)):
                result = simulate(
                    profile,
                    make_policy(args.policy, profile.widths, accuracy),
                    arrivals,
                    budget_s,
                    accuracy,
                    settings.scheduler_config(),
                    noise=0.05,
                    seed=SEED,
                    request_cpu_s=cpu_s,
                    speed=drift,
                )
                sims[name] = result.as_dict()
            row = {"load": load, "rate": rate, "request_cpu_ms": cpu_ms, "live": live, **sims,
                   "speed": {"batches": len(points), "mean": speed.mean() if speed else None,
                             "slow_share": speed.share_above(1.25) if speed else None,
                             "trace": trace_path.name}}
            rows.append(row)
            print(
                f"{load:.1f}x ({rate:.0f} req/s, request CPU {cpu_ms:.2f} ms, device speed mean "
                f"{row['speed']['mean'] or 0:.2f}x of the profile, slow {row['speed']['slow_share'] or 0:.0%} of the "
                f"time)"
            )
            for name in ("live", "sim", "sim+cpu", "sim+cpu+speed"):
                result = live if name == "live" else sims[name]
                print(f"  {name:>14}: attainment {result['attainment']:.3f}, top-1 per answer "
                      f"{result['mean_accuracy'] or 0:.3f}")
            time.sleep(1.0)
    (args.out / "sim_vs_live.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "policy": args.policy, "budget_ms": budget_s * 1e3,
         "widths": profile.widths, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
