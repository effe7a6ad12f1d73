"""Discrete-event simulation of the server's queue, batching and policy.

It drives the real :class:`policies.scheduler.Scheduler` and the real policies
with a virtual clock, and a single worker whose batch times come from the
latency profile (with optional log-normal noise, and optionally the device's
speed over time). It answers "what would this policy do at that load on that
device" without the device.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .base import Policy
from .deadline import Deadlines
from .profile import LatencyProfile
from .scheduler import Batch, Pending, Refused, ScheduledRequest, Scheduler, SchedulerConfig

__all__ = ["SimResult", "SpeedTrace", "arrival_times", "simulate", "TRACES"]

TRACES = ("poisson", "bursty", "step")


@dataclass(frozen=True)
class SimResult:
    sent: int
    served: int  # answered with logits (on time or late)
    on_time: int
    rejected: int  # 503/504 from admission or expiry
    attainment: float  # on_time / sent
    mean_accuracy: float | None  # mean expected top-1 of served requests
    p50_ms: float | None  # latency of served requests
    p99_ms: float | None
    width_mix: dict[str, float]  # share of served requests per width
    throughput_rps: float

    def as_dict(self) -> dict:
        return asdict(self)


def _poisson(rng: np.random.Generator, rate: float, start: float, end: float) -> list[float]:
    times, t = [], start
    if rate <= 0:
        return times
    while True:
        t += rng.exponential(1.0 / rate)
        if t >= end:
            return times
        times.append(t)


def arrival_times(trace: str, rate: float, duration: float, seed: int = 0) -> list[float]:
    """Arrival times (seconds) for a named trace with mean ``rate``, or read from a file.

    ``poisson``: constant rate. ``bursty``: every 2 s, 0.5 s at 2.5x the rate then
    1.5 s at 0.5x. ``step``: 0.5x for the first half, 1.5x for the second.
    A file holds a JSON list of arrival times or one time per line.
    """
    rng = np.random.default_rng(seed)
    if trace == "poisson":
        return _poisson(rng, rate, 0.0, duration)
    if trace == "bursty":
        times: list[float] = []
        for start in np.arange(0.0, duration, 2.0):
            times += _poisson(rng, 2.5 * rate, start, min(start + 0.5, duration))
            times += _poisson(rng, 0.5 * rate, min(start + 0.5, duration), min(start + 2.0, duration))
        return times
    if trace == "step":
        return _poisson(rng, 0.5 * rate, 0.0, duration / 2) + _poisson(rng, 1.5 * rate, duration / 2, duration)
    path = Path(trace)
    if not path.is_file():
        raise ValueError(f"trace must be one of {TRACES} or a file, got {trace!r}")
    text = path.read_text().strip()
    values = json.loads(text) if text.startswith("[") else [float(line) for line in text.splitlines() if line.strip()]
    return sorted(float(v) for v in values)


class SpeedTrace:
    """The device's speed over time, relative to the profile (1.5 = batches take 1.5x as profiled), as a
    callable for :func:`simulate`: the median of the measured ``(time s, factor)`` points within
    ``window_s`` of ``t``; before the first point the first factor, after the last the last, and
    between points that leave a window empty the nearest point's. A window of about half a second
    follows a VM's slow and fast spells (seconds long) without replaying each batch's own noise."""

    def __init__(self, points: Sequence[tuple[float, float]], window_s: float = 0.5, step_s: float = 0.05) -> None:
        points = sorted((float(t), float(f)) for t, f in points if f > 0)
        if not points:
            raise ValueError("a speed trace needs at least one (time, factor) point with factor > 0")
        self.step_s = step_s
        times = np.array([t for t, _ in points])
        factors = np.array([f for _, f in points])
        self.start = times[0]
        grid = np.arange(times[0], times[-1] + step_s, step_s)
        lo = np.searchsorted(times, grid - window_s / 2, "left")
        hi = np.searchsorted(times, grid + window_s / 2, "right")
        nearest = np.clip(np.searchsorted(times, grid), 0, len(times) - 1)
        self._grid = [
            float(np.median(factors[a:b])) if b > a else float(factors[n]) for a, b, n in zip(lo, hi, nearest)
        ]

    def __call__(self, t: float) -> float:
        index = int((t - self.start) / self.step_s + 0.5)
        return self._grid[min(max(index, 0), len(self._grid) - 1)]

    def mean(self) -> float:
        return statistics.fmean(self._grid)

    def share_above(self, factor: float) -> float:
        """The share of the traced time the device ran more than ``factor`` times slower than profiled."""
        return sum(f > factor for f in self._grid) / len(self._grid)

    @classmethod
    def load(cls, path: str | Path) -> "SpeedTrace":
        """A JSON file ``{"points": [[t, factor], ...], "window_s": 0.5}`` (what bench.sim_vs_live writes)
        or a bare list of points."""
        try:
            data = json.loads(Path(path).read_text())
            if isinstance(data, dict):
                return cls(data["points"], float(data.get("window_s", 0.5)))
            return cls(data)
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"speed trace {path}: expected {{\"points\": [[t, factor], ...]}} or a list of "
                             f"[t, factor] pairs ({type(exc).__name__}: {exc})") from None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    profile: LatencyProfile,
    policy: Policy,
    arrivals: Sequence[float],
    budget_s: float,
    accuracy: Mapping[float, float] | None = None,
    config: SchedulerConfig = SchedulerConfig(),
    noise: float = 0.0,
    seed: int = 0,
    request_cpu_s: float = 0.0,
    speed: Callable[[float], float] | None = None,
) -> SimResult:
    """Run ``arrivals`` through the scheduler (``config``, as ``serve`` builds it from its settings)
    and ``policy``; every request has ``budget_s``.

    ``request_cpu_s`` models a server whose own per-request work (HTTP, decoding, the reply) runs on
    the cores the model computes on, as ``serve`` measures it (``/v1/models`` ``request_cpu_ms``):
    half of it (parsing) before a request reaches the queue and half (the reply) after its batch,
    and every arrival during a batch steals that much core time from it. The scheduler and policies see it
    as the live server's do, and the reserve comes off every deadline as the server's does
    (:class:`~policies.deadline.Deadlines`, with this as the handler's overhead and no event-loop lag).

    ``speed(t)`` scales the batch starting at simulated time ``t`` (1 = as profiled): a host whose
    speed drifts (a VM's neighbours, thermal limits) serves the same batch 1.5x slower for seconds at a
    time, which no static profile shows; ``bench.sim_vs_live`` measures it from the live run's batches.

    With ``config.admission == "reject"`` (serve's default) an answer ready too late to reach the
    client within its budget (:meth:`~policies.deadline.Deadlines.too_late`) counts as refused, as the
    server answers it 504.

    Like the server's worker, every batch's time is fed back into the profile the scheduler and
    policies plan with (its online update and the recent tail that max-width plans for). That is a
    copy: batches take what the caller's profile says (the device's truth, which the server's
    beliefs do not change), and the caller's profile is left as it was.
    """
    truth, profile = profile, profile.copy()
    widths = profile.widths
    clock = _Clock()
    scheduler = Scheduler(policy, profile, widths, config, clock,
                          request_cpu=(lambda: request_cpu_s) if request_cpu_s else (lambda: None))
    deadlines = Deadlines(overhead_s=request_cpu_s)
    late_refused = config.admission == "reject"
    half = request_cpu_s / 2
    rng = np.random.default_rng(seed + 1)
    latencies: list[float] = []
    served_widths: list[float] = []
    on_time = rejected = 0
    busy_until: float | None = None
    next_arrival = 0

    running: list = []  # the batch on the device: (width, pending requests, samples, start)

    while True:
        if busy_until is None:
            polled = scheduler.poll(clock.now)
            if isinstance(polled, Batch):
                rejected += len(polled.expired)
                if polled.items:
                    service = truth.predict(polled.decision.width, polled.samples)
                    if speed is not None:
                        service *= speed(clock.now)
                    if noise:
                        service *= float(rng.lognormal(0.0, noise))
                    busy_until = float(clock.now + service)
                    running = [polled.decision.width, polled.items, polled.samples, clock.now]
                continue
            due = polled if isinstance(polled, float) else math.inf
        else:
            due = math.inf
        # a request reaches the queue once parsed (half its CPU after it arrived)
        t_arrival = arrivals[next_arrival] + half if next_arrival < len(arrivals) else math.inf
        t_free = busy_until if busy_until is not None else math.inf
        t_next = min(t_arrival, t_free, due)
        if t_next == math.inf:
            break
        clock.now = max(clock.now, t_next)
        if t_next == t_free:
            width, items, samples, started = running
            profile.observe(width, samples, clock.now - started)  # as the worker does, request CPU included
            for pending in items:
                req = pending.request
                if late_refused and deadlines.too_late(req.arrival, req.budget_s, clock.now):
                    rejected += 1  # the server's late check: 504, never a late 200
                    continue
                latency = clock.now + half - req.arrival  # the reply's half of the request's CPU after the batch
                met = bool(latency <= req.budget_s)
                latencies.append(latency)
                served_widths.append(width)
                on_time += int(met)
                policy.observe(width, latency, req.budget_s, met)
            busy_until, running = None, []
            scheduler.batch_done()
        elif t_next == t_arrival:
            if busy_until is not None and request_cpu_s:
                busy_until += request_cpu_s  # the request's CPU runs on the core the batch runs on
            deadline = deadlines.deadline(arrivals[next_arrival], budget_s)
            request = ScheduledRequest(next_arrival, 1, None, deadline.at, deadline.arrival, budget_s)
            next_arrival += 1
            try:
                scheduler.admit(Pending(request, lambda value: None))
            except Refused:
                rejected += 1

    sent = len(arrivals)
    span = (max(arrivals) - min(arrivals)) if len(arrivals) > 1 else 1.0
    mix = {repr(w): served_widths.count(w) / len(served_widths) for w in widths} if served_widths else {}
    mean_acc = None
    if accuracy and served_widths:
        mean_acc = statistics.fmean(accuracy[w] for w in served_widths)
    ordered = sorted(latencies)
    return SimResult(
        sent=sent,
        served=len(latencies),
        on_time=on_time,
        rejected=rejected,
        attainment=on_time / sent if sent else 1.0,
        mean_accuracy=mean_acc,
        p50_ms=ordered[len(ordered) // 2] * 1e3 if ordered else None,
        p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3 if ordered else None,
        width_mix=mix,
        throughput_rps=len(latencies) / span,
    )
