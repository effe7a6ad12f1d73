"""The host probe: what the host does to a request outside the model, measured on the event loop.

Two things no handler can time, both of which the engine plans with:

- the event loop's scheduling delay (how late it runs a timer): a request's first bytes wait that
  long before the server reads them, so it is kept in reserve before every deadline
  (:meth:`~policies.deadline.Deadlines.note_loop_lag`);
- the server's own CPU per request (HTTP, decoding, scheduling, replies) when it runs on the cores the
  model computes on: every arrival then steals core time from the batch running, which max-width
  charges against the core's capacity (:attr:`~policies.base.LoadSignals.request_cpu_s`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable

from policies.deadline import Deadlines
from server.metrics import Metrics
from server.runtime.cpus import usable_cpus

__all__ = ["HostProbe"]


class HostProbe:
    """Watches the event loop (:meth:`watch`, a task on it) once the model is started (:meth:`model_started`)."""

    # Every probe wakes the loop (and, on a shared core, preempts the batch): an idle server spent
    # 4.5-4.7% of a core with a probe every 5 ms, 1.6-1.7% every 20 ms (BENCHMARKS.md, "Event-loop probes").
    LAG_PROBE_S = 0.02
    LAG_WINDOW = 50  # probes: about the last second
    LAG_PERCENTILE_EVERY = 5  # probes: about every 0.1 s
    CPU_WINDOW_S = 1.0
    CPU_ALPHA = 0.3  # how fast the per-request CPU follows each window's figure

    def __init__(self, deadlines: Deadlines, metrics: Metrics) -> None:
        self.deadlines = deadlines
        self.metrics = metrics
        self.usable_cpus = 1  # the affinity mask capped by the CPU quota, read when the model starts
        self.measured_cpu_s: float | None = None  # the server's own CPU per request, once requests came
        self.requests_seen = 0  # requests that reached admission (event loop only)
        self._lags: collections.deque[float] = collections.deque(maxlen=self.LAG_WINDOW)
        self._shares_cores = False
        self._worker_cpu_s: Callable[[], float] = lambda: 0.0
        self._device_speed: Callable[[], float | None] = lambda: None

    def read_host(self) -> None:
        """Read how many CPUs this process may use (at start-up, before the runtime is sized)."""
        self.usable_cpus = usable_cpus()

    def model_started(self, device_type: str, threads: int, worker_cpu_s: Callable[[], float],
                      device_speed: Callable[[], float | None]) -> None:
        """The model runs on ``device_type`` with ``threads``; ``worker_cpu_s()`` is the worker thread's
        CPU outside the model so far, ``device_speed()`` the profile's learnt speed (both reported)."""
        self._shares_cores = device_type == "cpu" and threads >= self.usable_cpus
        self._worker_cpu_s = worker_cpu_s
        self._device_speed = device_speed

    @property
    def request_cpu_s(self) -> float | None:
        """The server's own CPU per request when it runs on the cores the model computes on (what the
        policies charge against the core); None when the event loop has cores of its own."""
        return self.measured_cpu_s if self._shares_cores else None

    @property
    def shares_cores_with_model(self) -> bool:
        """The model's threads take every core this process may use (CPU runtime), so the event loop's
        work delays batches; with a GPU or spare cores it does not."""
        return self._shares_cores

    def count_request(self) -> None:
        self.requests_seen += 1

    async def watch(self, ready: Callable[[], bool]) -> None:
        """Probe the loop until cancelled. The lag is kept as the 90th percentile of the last second's
        probes (a percentile, so one stall such as a GC pause does not count); what start-up did
        (exports and profiling hold the GIL) is forgotten until ``ready()``."""
        loop = asyncio.get_running_loop()
        window_start, cpu_start, seen_start = loop.time(), self._serving_cpu_s(), self.requests_seen
        probes = 0
        while True:
            before = loop.time()
            await asyncio.sleep(self.LAG_PROBE_S)
            now = loop.time()
            self._lags.append(max(0.0, now - before - self.LAG_PROBE_S))
            probes += 1
            if probes % self.LAG_PERCENTILE_EVERY == 0:
                if ready():
                    lag = sorted(self._lags)[int(0.9 * (len(self._lags) - 1))]
                    self.deadlines.note_loop_lag(lag)
                    self.metrics.record_event_loop(lag, self.measured_cpu_s, self._device_speed())
                else:
                    self._lags.clear()
            if now - window_start >= self.CPU_WINDOW_S:
                cpu, seen = self._serving_cpu_s(), self.requests_seen
                if seen > seen_start:
                    self._note_request_cpu((cpu - cpu_start) / (seen - seen_start))
                window_start, cpu_start, seen_start = now, cpu, seen

    def _serving_cpu_s(self) -> float:
        """CPU seconds so far of the event loop (the calling thread: HTTP, inline decoding, replies) and
        of the worker outside the model (scheduling, the policy, answering)."""
        return time.thread_time() + self._worker_cpu_s()

    def _note_request_cpu(self, per_request_s: float) -> None:
        previous = self.measured_cpu_s
        self.measured_cpu_s = per_request_s if previous is None else \
            previous + self.CPU_ALPHA * (per_request_s - previous)
