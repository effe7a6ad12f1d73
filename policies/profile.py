"""Latency profile: service time of each (width, batch size), measured on the serving device.

Measured at startup (medians, in rounds over the whole table), optionally loaded from / saved to
JSON, and updated online from observed batch times (EWMA) so it follows the
machine when it slows down.
"""

from __future__ import annotations

import collections
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

__all__ = ["LatencyProfile", "batch_sizes_up_to", "measure_profile", "monotone", "service_time", "time_runs"]


def batch_sizes_up_to(max_batch: int) -> list[int]:
    """1, 2, 4, ... and ``max_batch`` itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


def service_time(profile: "LatencyProfile", width: float, samples: int, margin: float) -> float:
    """Seconds to plan for running ``samples`` at ``width``: the profile plus the margin.

    Choosing a width (the policies, dispatch timing) plans with the margin: a width that fits the
    remaining budget exactly misses it whenever the batch runs a little slower than its median.
    Judging whether a request will be late (admission, expiry) uses no margin: the request with a
    chance is served, at the narrowest width as ``fallback`` if it must (BENCHMARKS.md, "Saturation").
    """
    return profile.predict(width, samples) * (1.0 + margin)


class LatencyProfile:
    """Thread-safe table of seconds per batch, keyed by width and batch size.

    ``predict`` interpolates linearly between measured batch sizes and
    extrapolates with the per-sample cost of the largest one.
    """

    def __init__(
        self, table: Mapping[float, Mapping[int, float]], ewma_alpha: float = 0.1, fingerprint: Mapping | None = None,
    ) -> None:
        """``fingerprint`` names what was measured (model, device, backend, threads; see
        ``server.runtime.runtime_fingerprint``); a server refuses a profile whose fingerprint is not its own."""
        if not table:
            raise ValueError("a latency profile needs at least one width")
        # Observations update the raw table; predictions read its monotone view (a close pair of grid
        # widths must not swap places because one batch ran slow).
        self._raw = {float(w): {int(b): float(s) for b, s in row.items()} for w, row in table.items()}
        self._table = monotone(self._raw)
        for w, row in self._raw.items():
            if not row or any(s <= 0 for s in row.values()):
                raise ValueError(f"width {w}: latencies must be positive")
        self._measured = self._table  # as measured: the device speed is learnt against it
        self._speed = 1.0  # the device's recent speed over the measured table (>1: slower)
        self.ewma_alpha = ewma_alpha
        self.fingerprint = dict(fingerprint) if fingerprint is not None else None
        self._lock = threading.Lock()
        # observed / predicted seconds of the recent batches: how far the live tail runs past the profile
        self._ratios: collections.deque[float] = collections.deque(maxlen=self.TAIL_WINDOW)
        self._ordered_ratios: tuple[float, ...] | None = None  # sorted _ratios, until the next observe

    @property
    def widths(self) -> tuple[float, ...]:
        return tuple(sorted(self._table))

    def predict(self, width: float, batch: int) -> float:
        """Predicted seconds to run ``batch`` samples at ``width``."""
        with self._lock:
            return _interpolate(self._table[width], batch) * self._speed

    @property
    def speed(self) -> float:
        """The device's learnt speed over the measured table, shared by every width (1.25: batches
        run 25% slower than measured at start-up)."""
        return self._speed

    TAIL_WINDOW = 256  # batches
    TAIL_MIN_BATCHES = 32  # fewer observed: no tail estimate yet

    def tail_ratio(self, quantile: float = 0.9) -> float:
        """How much longer than predicted the recent batches ran, at ``quantile`` of the last
        ``TAIL_WINDOW`` (never below 1; 1 until ``TAIL_MIN_BATCHES`` are seen). On a core shared with
        the event loop the median batch runs as profiled but the tail does not (requests arriving
        during a batch take the core from it); a plan that fills a budget to the median misses there."""
        ordered = self.recent_ratios()
        if not ordered:
            return 1.0
        return max(1.0, ordered[min(len(ordered) - 1, int(quantile * len(ordered)))])

    def recent_ratios(self) -> tuple[float, ...]:
        """Observed / predicted seconds of the last ``TAIL_WINDOW`` batches, ascending; empty until
        ``TAIL_MIN_BATCHES`` are seen. Sorted once per observed batch, not once per question."""
        with self._lock:
            if len(self._ratios) < self.TAIL_MIN_BATCHES:
                return ()
            if self._ordered_ratios is None:
                self._ordered_ratios = tuple(sorted(self._ratios))
            return self._ordered_ratios

    def observe(self, width: float, batch: int, seconds: float) -> None:
        """Fold an observed batch time into the profile and into the tail estimate (:meth:`tail_ratio`).

        Two things learn from it (EWMA, ``ewma_alpha``): the device's speed, one factor over the
        table measured at start-up that every entry shares, and the entry nearest this batch, which
        keeps only what this width and size do unlike the rest. A host that slows down slows every
        width; when only the entries that ran learnt it, a width grid's rarely-run widths kept their
        start-up times, and max-width chose exactly those, planning a 1.5x-slow device as at
        start-up (BENCHMARKS.md, "Device speed")."""
        with self._lock:
            row = self._raw.get(width)
            if row is None or seconds <= 0:
                return
            ratio = seconds / (_interpolate(self._table[width], batch) * self._speed)
            self._ratios.append(ratio)
            self._ordered_ratios = None
            if not self.ewma_alpha:
                return
            # one stalled batch (a GC pause, a preempted vCPU) must not slow every width's plan at
            # once: a step counts at most twice (or half) the current speed
            measured = seconds / _interpolate(self._measured[width], batch)
            measured = min(max(measured, 0.5 * self._speed), 2.0 * self._speed)
            self._speed += self.ewma_alpha * (measured - self._speed)
            ratio = seconds / (_interpolate(self._table[width], batch) * self._speed)
            # The nearest measured size moves by the observed / predicted ratio: folding a batch of 3's
            # raw seconds into the entry for 2 (as this once did) made every batch of 2 look that slow.
            nearest = min(row, key=lambda b: abs(b - batch))
            row[nearest] += self.ewma_alpha * (row[nearest] * ratio - row[nearest])
            self._table = _remonotone(self._raw, self._table, width)

    def relax_speed(self, keep: float) -> None:
        """Move the learnt device speed back toward the start-up table, keeping ``keep`` (0..1) of how far
        it is from it: what the scheduler does while no batch runs (see Scheduler.SPEED_HALF_LIFE_S)."""
        with self._lock:
            self._speed = 1.0 + (self._speed - 1.0) * keep

    def at_widths(self, widths: Iterable[float]) -> "LatencyProfile":
        """The same measurements for ``widths`` only (e.g. four widths of a measured grid), as this profile
        predicts them; no recent tail and no fingerprint (it names the width list that was measured).
        ``ValueError`` for a width this profile has not measured."""
        with self._lock:
            missing = [w for w in widths if w not in self._table]
            if missing:
                raise ValueError(f"widths {missing} are not in this profile ({sorted(self._table)})")
            table = {w: {b: t * self._speed for b, t in self._table[w].items()} for w in widths}
        return LatencyProfile(table, self.ewma_alpha)

    def copy(self) -> "LatencyProfile":
        """An independent profile with the same table, settings and recent tail (what a simulation
        learns must not leak into the caller's profile)."""
        with self._lock:
            twin = LatencyProfile(self._raw, self.ewma_alpha, self.fingerprint)
            twin._measured, twin._speed = self._measured, self._speed
            twin._ratios.extend(self._ratios)
        return twin

    def as_dict(self) -> dict:
        """``{"widths": {"0.5": {"1": 0.0012, ...}}}`` in seconds."""
        with self._lock:
            widths = {str(w): {str(b): s * self._speed for b, s in sorted(row.items())}
                      for w, row in sorted(self._table.items())}
        data: dict = {"unit": "seconds", "widths": widths}
        if self.fingerprint is not None:
            data["fingerprint"] = self.fingerprint
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: Mapping, ewma_alpha: float = 0.1) -> "LatencyProfile":
        widths = data.get("widths") if isinstance(data, Mapping) else None
        if not isinstance(widths, Mapping):
            raise ValueError("profile JSON needs an object 'widths': {width: {batch: seconds}}")
        fingerprint = data.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, Mapping):
            raise ValueError("profile JSON 'fingerprint' must be an object")
        try:
            table = {float(w): {int(b): float(s) for b, s in row.items()} for w, row in widths.items()}
        except (AttributeError, TypeError, ValueError):
            raise ValueError("profile JSON 'widths' must map widths to {batch size: seconds}") from None
        return cls(table, ewma_alpha, fingerprint)

    @classmethod
    def load(cls, path: str | Path, ewma_alpha: float = 0.1) -> "LatencyProfile":
        try:
            data = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"profile {path} is not JSON: {exc}") from None
        return cls.from_dict(data, ewma_alpha)

    def mismatches(self, expected: Mapping) -> list[str]:
        """Fields of ``expected`` that this profile's fingerprint lacks or measured differently."""
        if self.fingerprint is None:
            return ["fingerprint (the profile does not say what it measured)"]
        return [f"{key} (profile {self.fingerprint.get(key)!r}, server {value!r})"
                for key, value in expected.items() if self.fingerprint.get(key) != value]


def _interpolate(row: Mapping[int, float], batch: int) -> float:
    """Seconds for ``batch`` from one width's row: linear between measured batch sizes, the largest
    one's per-sample cost beyond it."""
    exact = row.get(batch)
    if exact is not None:  # the common case: a measured batch size
        return exact
    sizes = sorted(row)
    if batch <= sizes[0]:
        return row[sizes[0]]
    for lo, hi in zip(sizes, sizes[1:]):
        if lo < batch < hi:
            frac = (batch - lo) / (hi - lo)
            return row[lo] + frac * (row[hi] - row[lo])
    largest = sizes[-1]
    return row[largest] * batch / largest


# Timed runs of one (width, batch) pair per round of :func:`measure_profile`, after one untimed run.
PROFILE_BLOCK = 3


def measure_profile(
    run: Callable[[float, int], None], widths: Iterable[float], batch_sizes: Iterable[int], warmup: int = 1,
    repeats: int = 15, progress: Callable[[float], None] | None = None,
) -> LatencyProfile:
    """Seconds of ``run(width, batch)`` for every pair, from ``repeats`` timed runs each.

    The table is measured in rounds: each round runs every pair ``warmup`` times untimed (the switch
    from the previous pair stays out of the figure) and then up to :data:`PROFILE_BLOCK` times timed,
    until every pair has ``repeats``. Each round thus sees the host at one speed for all pairs, and
    :func:`_without_round_speed` takes that speed out before the pairs are compared. Measuring width
    after width instead put each width in whatever speed the host had at that moment: on a VM whose
    speed drifts by 1.5x for seconds at a time, the ratio of two widths' batch-1 times varied with a
    standard deviation of 0.35-0.64 over six start-ups (BENCHMARKS.md, "Start-up profile stability"), and
    a narrow width could come out as slow as a wider one. ``progress(width)`` is called as each width
    finishes its last round."""
    widths, batch_sizes = list(widths), list(batch_sizes)
    pairs = [(w, b) for w in widths for b in batch_sizes]
    timed = {pair: 0 for pair in pairs}
    rounds: list[dict[tuple[float, int], float]] = []  # per round: each pair's median of its block
    while any(n < repeats for n in timed.values()):
        last_round = all(n + PROFILE_BLOCK >= repeats for n in timed.values())
        block: dict[tuple[float, int], float] = {}
        for width in widths:
            for batch in batch_sizes:
                count = min(PROFILE_BLOCK, repeats - timed[(width, batch)])
                if count <= 0:
                    continue
                seconds = time_runs(run, width, batch, warmup, count)
                timed[(width, batch)] += count
                block[(width, batch)] = statistics.median(seconds)
            if last_round and progress is not None:
                progress(width)
        rounds.append(block)
    base = _without_round_speed(rounds, pairs)
    table = {w: {b: base[(w, b)] for b in batch_sizes} for w in widths}
    return LatencyProfile(monotone(table))


def time_runs(run: Callable[[float, int], None], width: float, batch: int, warmup: int, count: int) -> list[float]:
    """Seconds of each of ``count`` timed ``run(width, batch)`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run(width, batch)
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        run(width, batch)
        seconds.append(time.perf_counter() - start)
    return seconds


def _without_round_speed(rounds: list[dict], pairs: list) -> dict:
    """Each pair's time with the host's speed in each round taken out (a two-way median fit:
    ``time(pair, round) = base(pair) x speed(round)``, the median round's speed as the level). A
    host that slows down for part of the measurement then slows every pair's figure alike, and a
    change within one round is outvoted by the others."""
    speed = [1.0] * len(rounds)
    base: dict = {}
    for _ in range(3):
        base = {
            pair: statistics.median(r[pair] / speed[i] for i, r in enumerate(rounds) if pair in r) for pair in pairs
        }
        speed = [statistics.median(t / base[pair] for pair, t in r.items()) for r in rounds]
        level = statistics.median(speed)
        speed = [s / level for s in speed]
    return base


def _remonotone(raw: Mapping[float, Mapping[int, float]], table: dict[float, dict[int, float]],
                changed: float) -> dict[float, dict[int, float]]:
    """``monotone(raw)`` after only ``raw[changed]`` moved, given ``table == monotone(raw before)``:
    rows narrower than ``changed`` stay, and each wider row depends only on its own raw row and the
    made-monotone row below it, so the work stops at the first row that comes out as it was. Every
    observed batch re-made the whole table, 22 us per batch on a 14-width grid on the inference thread."""
    widths = sorted(raw)
    at = widths.index(changed)
    out = dict(table)  # a new table: the rows of the old one stay as they were (``_measured`` keeps one)
    previous = out[widths[at - 1]] if at else {}
    for width in widths[at:]:
        row = _monotone_row(raw[width], previous)
        if row == table[width]:
            break
        out[width] = previous = row
    return out


def monotone(table: Mapping[float, Mapping[int, float]]) -> dict[float, dict[int, float]]:
    """Make latency non-decreasing in batch size and in width.

    A noisy machine can time a wider switch or a bigger batch as faster; a
    policy trusting that would pick a width that cannot keep its promise.
    """
    out: dict[float, dict[int, float]] = {}
    previous: dict[int, float] = {}
    for width in sorted(table):
        out[width] = previous = _monotone_row(table[width], previous)
    return out


def _monotone_row(row: Mapping[int, float], below: Mapping[int, float]) -> dict[int, float]:
    """One width's row, non-decreasing in batch size and never below the narrower width's ``below``."""
    out, floor = {}, 0.0
    for batch in sorted(row):
        floor = max(floor, row[batch], below.get(batch, 0.0))
        out[batch] = floor
    return out
