"""Open-loop load against a live ``widthwise serve``: every policy, several offered loads.

Poisson (or bursty) arrivals with a fixed latency budget per request, sent
without waiting for answers (open loop), 127.0.0.1 only, bounded in count and
time. Per policy and load: achieved throughput, deadline attainment (answered
200 within budget at the client / sent), late 200s (answered 200 after the
budget, at the client), p50/p99 latency, width mix, mean expected accuracy per
request sent (late or refused = 0) and per answer, the client's own CPU per
request and its send lag (actual minus scheduled send time). With ``--pin`` the
server runs on core 0 with one ONNX Runtime thread and this client on core 1.
By default each policy's server runs all its loads, one policy after another; on a host whose speed
drifts for minutes (this project's VM) that compares policies across different minutes, so
``--paired N`` keeps every policy's server up at once and runs each load on all of them in turn, N
rounds in alternating order (the table and PNG average the rounds; the JSON keeps each).
With ``--baseline REV`` as well, each policy also runs on a server from a worktree of that commit
(column ``policy@REV``), paired the same way: a live A/B of two trees in the same minutes.
Writes JSON and a PNG; the live counterpart of bench/policy_sim.py.

    python -m bench.load --out out/load [--loads 0.5,1,2,3] [--duration 10] [--pin]
    python -m bench.load --checkpoint us.safetensors --widths 0.35:1.0:0.05 --policies max-width,slack --pin ...
    python -m bench.load --pin --request v2 --policies max-width,fixed:0.35,fixed:0.5 --paired 2 ...
    python -m bench.load --pin --request v2 --policies max-width --paired 2 --baseline 8804cba ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import statistics
import time
import urllib.parse
from pathlib import Path
from typing import Sequence

import httpx2
import numpy as np

import models
from bench.common import REPO, imagenet_checkpoint, mean_over_rounds, noise_jpeg
from bench.http_client import LeanClient
from policies.simulator import arrival_times
from server.testing import live_server

MAX_REQUESTS = 5000  # hard bound per point


async def fire(client: LeanClient, send_at: float, t0: float, results: list, lags: list,
               width: float | None = None, answers: list | None = None) -> None:
    await asyncio.sleep(max(0.0, t0 + send_at - time.perf_counter()))
    lags.append((time.perf_counter() - (t0 + send_at)) * 1e3)
    answer = await client.post()
    if answers is not None:
        answers.append((send_at, answer))
    served = answer.headers.get("x-served-width")  # a peer server at one width does not say it
    results.append((answer.status, answer.elapsed_ms,
                    (float(served) if served else width) if answer.status == 200 else None))


JPEG = {"content-type": "image/jpeg"}


def v2_request(model: str = "v2", size: int = 224) -> tuple[str, bytes, dict]:
    """A v2 binary FP32 [1, 3, size, size] request (as a Triton client sends an ONNX model's input):
    path, body and headers."""
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, size, size], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return (f"/v2/models/{model}/infer", header + x.tobytes(),
            {"content-type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})


async def run_point(url: str, body: bytes, rate: float, duration: float, budget_ms: float, trace: str,
                    headers: dict = JPEG, width: float | None = None, answers: list | None = None,
                    seed: int = 11) -> tuple[list, dict]:
    """The answers (status, client latency ms, width) and the client's own costs; ``width``: the width
    of a server that does not send ``X-Served-Width`` (a peer serving one width). The client is
    :class:`~bench.http_client.LeanClient`: httpx cost ~2 ms of CPU per request on the client's core,
    which queued answers behind each other and counted against the server at the client. ``answers``,
    when given, receives ``(scheduled send time, Answer)`` for every request (headers included);
    ``seed``: the arrivals' (each round of a paired run its own)."""
    arrivals = arrival_times(trace, rate, duration, seed=seed)[:MAX_REQUESTS]
    results: list = []
    lags: list = []
    target = urllib.parse.urlsplit(url)
    client = LeanClient(target.hostname, target.port, target.path, body,
                        {**headers, "X-Latency-Budget-Ms": str(budget_ms)})
    cpu0 = time.process_time()
    t0 = time.perf_counter() + 0.2
    try:
        await asyncio.gather(*(fire(client, a, t0, results, lags, width, answers) for a in arrivals))
    finally:
        client.close()
    client_costs = {"client_cpu_ms_per_request": (time.process_time() - cpu0) / max(1, len(arrivals)) * 1e3,
                    "send_lag_p50_ms": float(np.percentile(lags, 50)) if lags else None,
                    "send_lag_p99_ms": float(np.percentile(lags, 99)) if lags else None}
    return results, client_costs


def measure_point(url: str, body: bytes, rate: float, duration: float, budget_ms: float, accuracy: dict[float, float],
                  trace: str = "poisson", headers: dict = JPEG, width: float | None = None,
                  answers: list | None = None) -> dict:
    """One open-loop point against ``url``: :func:`summarize` of the answers and the client's own costs
    (``answers``: as :func:`run_point`)."""
    results, client = asyncio.run(run_point(url, body, rate, duration, budget_ms, trace, headers, width, answers))
    return {**summarize(results, budget_ms, duration, accuracy), **client}


def describe(row: dict) -> str:
    """One line for a :func:`measure_point` row, as every load benchmark prints it."""
    return (
        f"attainment {row['attainment']:.3f}, late 200s {row['late_200']}, accuracy/sent "
        f"{row['accuracy_per_sent'] or 0:.3f} (/answer {row['mean_accuracy'] or 0:.3f}), p50 {row['p50_ms'] or 0:.1f} "
        f"ms, p99 {row['p99_ms'] or 0:.1f} ms, statuses {row['statuses']}, client CPU "
        f"{row['client_cpu_ms_per_request']:.2f} ms/req, send lag p99 {row['send_lag_p99_ms'] or 0:.1f} ms"
        + (f", device speed {row['device_speed']:.2f}x" if row.get("device_speed") else "")
    )


def server_device_speed(url: str) -> float | None:
    """The server's learnt device speed over its start-up profile, now (None from servers that do not report it)."""
    return httpx2.get(url + "/v1/models").json()["models"][0].get("device_speed")


def _percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    return {f"p{q}": values[min(len(values) - 1, int(q / 100 * len(values)))] for q in (50, 90, 99)}


def summarize(results: list, budget_ms: float, duration: float, accuracy: dict[float, float]) -> dict:
    ok = [(lat, w) for status, lat, w in results if status == 200]
    on_time = [(lat, w) for lat, w in ok if lat <= budget_ms]
    late = len(ok) - len(on_time)
    lat = sorted(latency for latency, _ in ok)
    widths = [w for _, w in ok]
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "sent": len(results),
        "statuses": statuses,
        "throughput_rps": len(ok) / duration,
        "attainment": len(on_time) / len(results) if results else 1.0,
        "late_200": late,
        "late_200_fraction": late / len(results) if results else 0.0,
        # how late the late 200s were at the client (ms past the budget): a few ms is reply and client
        # lag the server's check could still catch; tens of ms is a stalled host
        "late_200_excess_ms": _percentiles(sorted(lat - budget_ms for lat, _ in ok if lat > budget_ms)),
        # what the client got: on-time answers score their width's accuracy, late or refused ones 0
        "accuracy_per_sent": sum(accuracy[w] for _, w in on_time) / len(results) if results else None,
        "p50_ms": lat[len(lat) // 2] if lat else None,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "width_mix": {str(w): widths.count(w) / len(widths) for w in sorted(set(widths))} if widths else {},
        "mean_accuracy": statistics.fmean(accuracy[w] for w in widths) if widths else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s_mobilenet_v2")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="serve this checkpoint instead of a random --arch one (its expected accuracy per width)")
    parser.add_argument("--widths", default=None, help="serve's --widths (a list or lo:hi:step)")
    parser.add_argument("--rates", default=None, help="comma-separated req/s (default: --loads x the widest capacity)")
    parser.add_argument("--loads", default="0.5,1,1.5,2",
                        help="offered loads as multiples of the widest width's capacity (when --rates is not given)")
    parser.add_argument("--request", choices=["jpeg", "v2"], default="jpeg",
                        help="jpeg: a 224x224 JPEG to /v1/classify; v2: a binary FP32 tensor to the v2 endpoint")
    parser.add_argument("--pin", action="store_true",
                        help="server on core 0 with 1 ORT thread, this client on core 1 (taskset)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--trace", default="poisson")
    parser.add_argument(
        "--policies", default=None, help="comma-separated (default: fixed:<each width>,max-width,slack,feedback)"
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="per-request budget (default: 3x the widest width's batch-1 engine latency)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="serve with this latency profile instead of measuring one at start-up: A/Bs of two "
                             "commits then plan from the same numbers (start-up profiles differ by up to 1.8x here)")
    parser.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                        help="every policy's server up at once (keep-warm off in all, as an idle server's would take "
                             "the core from the one under load); each rate runs on every policy in turn, ROUNDS times "
                             "in alternating order, so the policies meet the same minutes of a drifting host")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="with --paired: each policy also on a server from a worktree of this commit")
    parser.add_argument("--profile-per-tree", action="store_true",
                        help="with --baseline: each tree measures its own start-up profile (start-up cache off), for "
                             "changes to the engine's speed, where one profile would plan one tree with the other's")
    parser.add_argument("--serve-args", default="", help='more serve flags for every server, e.g. "--weights shared"')
    parser.add_argument("--out", type=Path, default=Path("out/load"))
    args = parser.parse_args(argv)
    if args.baseline and not args.paired:
        parser.error("--baseline compares trees in the same minutes: it needs --paired")
    if args.profile_per_tree and (not args.baseline or args.profile):
        parser.error("--profile-per-tree needs --baseline and no --profile")
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = (args.checkpoint or imagenet_checkpoint(args.arch)).resolve()  # a baseline runs in its worktree
    size = models.load_checkpoint(checkpoint).net.input_size
    path, body, headers = ("/v1/classify", noise_jpeg(np.random.default_rng(0), size), JPEG) if args.request == "jpeg" \
        else v2_request(size=size)
    profile_path = args.profile.resolve() if args.profile else (args.out / "profile.json").resolve()
    common = ["--checkpoint", str(checkpoint), "--model-name", "v2", "--max-batch-size", str(args.max_batch_size)]
    if args.widths:
        common += ["--widths", args.widths]
    common += shlex.split(args.serve_args)
    cpus = None
    if args.pin:
        common += ["--threads", "1"]
        cpus = {0}
        os.sched_setaffinity(0, {1})
    # Measure the profile once (unless given), then every policy's server reuses it (same decisions basis,
    # faster start).
    profile_flags = ["--profile", str(profile_path)] if args.profile else \
        ["--save-profile", str(profile_path), *(["--startup-cache", "off"] if args.profile_per_tree else [])]
    with live_server(*common, "--policy", "max-width", *profile_flags, cpus=cpus) as url:
        model = httpx2.get(url + "/v1/models").json()["models"][0]
    widths = [w["width"] for w in model["widths"]]
    accuracy = {w["width"]: w["expected_accuracy"] for w in model["widths"]}
    table = json.loads(profile_path.read_text())["widths"]  # with its fingerprint, as serve wrote it
    widest_b1_ms = model["widths"][-1]["latency_ms"]["1"]
    budget_ms = args.budget_ms or 3 * widest_b1_ms
    cap = max(int(b) / (ms / 1e3) for b, ms in model["widths"][-1]["latency_ms"].items())
    loads = [float(m) for m in args.loads.split(",")]
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [round(m * cap, 1) for m in loads]
    policies = (
        args.policies.split(",")
        if args.policies
        else [f"fixed:{w:g}" for w in widths] + ["max-width", "slack", "feedback"]
    )
    print(
        f"budget {budget_ms:.1f} ms (3x widest batch-1 {widest_b1_ms:.2f} ms), widest capacity ~{cap:.0f} req/s, "
        f"rates {rates}"
    )
    point = dict(body=body, duration=args.duration, budget_ms=budget_ms, accuracy=accuracy, trace=args.trace,
                 headers=headers, path=path, cap=cap)
    if args.paired:
        rounds = paired_rows(common, profile_path, cpus, policies, rates, args.paired, point, args.baseline,
                             args.profile_per_tree)
        policies = list(dict.fromkeys(r["policy"] for r in rounds))  # with the baseline's columns
        rows = mean_over_rounds(rounds, ("policy", "rate"))
        print_cells(rows, policies, rates)
    else:
        rounds, rows = [], []
        for policy in policies:
            with live_server(*common, "--policy", policy, "--profile", str(profile_path), cpus=cpus) as url:
                for rate in rates:
                    rows.append(run_one(url, policy, rate, point))
    report = {"date": time.strftime("%Y-%m-%d"), "budget_ms": budget_ms, "capacity_rps": cap, "rows": rows,
              "rounds": rounds, "profile": table, "pinned": args.pin, "duration_s": args.duration,
              "request": args.request, "paired": args.paired, "baseline": args.baseline,
              "profile_per_tree": args.profile_per_tree, "serve_args": args.serve_args}
    (args.out / "load.json").write_text(json.dumps(report, indent=2))
    plot(rows, policies, cap, args.out / "load.png", budget_ms)
    print(f"wrote {args.out / 'load.json'} and {args.out / 'load.png'}")


def run_one(url: str, policy: str, rate: float, point: dict, **extra) -> dict:
    """One open-loop point against a server running ``policy``; printed as it ends."""
    row = {"policy": policy, "rate": rate, "load": rate / point["cap"], **extra,
           **measure_point(url + point["path"], point["body"], rate, point["duration"], point["budget_ms"],
                           point["accuracy"], point["trace"], point["headers"])}
    row["device_speed"] = server_device_speed(url)  # as the point ends
    which = "" if "round" not in extra else f" round {extra['round']}"
    print(
        f"{policy:>11} {rate:>7.1f} req/s ({row['load']:.1f}x){which}: "
        f"{describe(row)}, late excess ms {row['late_200_excess_ms']}",
        flush=True,
    )
    time.sleep(1.0)  # let the queue drain between points
    return row


def paired_rows(common: list[str], profile_path: Path, cpus, policies: list[str], rates: list[float], rounds: int,
                point: dict, baseline: str | None = None, profile_per_tree: bool = False) -> list[dict]:
    """``--paired``: all policies' servers at once (and with ``baseline``, each policy again on a server
    from a worktree of that commit, labelled ``policy@baseline``), each rate on every one, ``rounds`` times.
    With ``profile_per_tree`` the baseline's servers plan with a profile its own tree measured."""
    from bench.overhead_ab import worktree

    rows = []
    with contextlib.ExitStack() as servers:
        trees = {"": REPO}
        if baseline:
            trees[f"@{baseline}"] = servers.enter_context(worktree(baseline))
        profiles = {suffix: profile_path for suffix in trees}
        if baseline and profile_per_tree:
            profiles[f"@{baseline}"] = profile_path.with_name(f"profile@{baseline}.json")
            with live_server(*common, "--policy", "max-width", "--startup-cache", "off", "--save-profile",
                             str(profiles[f"@{baseline}"]), cpus=cpus, tree=trees[f"@{baseline}"]):
                pass
        urls = {policy + suffix: servers.enter_context(live_server(
                    *common, "--policy", policy, "--profile", str(profiles[suffix]), "--keep-warm-ms", "0", cpus=cpus,
                    tree=tree))
                for suffix, tree in trees.items() for policy in policies}
        labels = list(urls)
        for rate in rates:
            for turn in range(rounds):
                for label in labels if turn % 2 == 0 else labels[::-1]:
                    rows.append(run_one(urls[label], label, rate, point, round=turn))
    return rows


def print_cells(rows: list[dict], policies: list[str], rates: list[float]) -> None:
    """The paired rounds' means: attainment / top-1 per request sent, a row per rate."""
    cell = {(r["policy"], r["rate"]): r for r in rows}
    print("\n   req/s | " + " | ".join(f"{p:>15}" for p in policies))
    for rate in rates:
        print(
            f"{rate:>8.1f} | "
            + " | ".join(
                f"{cell[p, rate]['attainment']:.3f} / {cell[p, rate]['accuracy_per_sent']:.3f}" for p in policies
            )
        )


def plot(rows, policies, cap, path, budget_ms) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for p in policies:
        pts = [r for r in rows if r["policy"] == p]
        style = ":" if "@" in p else "--" if p.startswith("fixed") else "-"
        a1.plot([r["rate"] / cap for r in pts], [r["attainment"] for r in pts], style, marker="o", label=p)
        a2.plot([r["rate"] / cap for r in pts], [r["accuracy_per_sent"] for r in pts], style, marker="o", label=p)
    a1.set(
        xlabel="offered load (x widest capacity)",
        ylabel="deadline attainment",
        ylim=(0, 1.02),
        title=f"live, budget {budget_ms:.0f} ms",
    )
    a2.set(
        xlabel="offered load (x widest capacity)",
        ylabel="expected top-1 per request sent",
        title="accuracy (late or refused = 0)",
    )
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
