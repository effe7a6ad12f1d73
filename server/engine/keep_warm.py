"""Keep the model warm while the server is idle.

On a quiet host the first request after an idle spell is served from cold caches: on this project's
2-vCPU VM the digits model's README request took 2-3 ms back to back but 75-130 ms after 3-10 s
idle, and its 25 ms budget turned into 504s (python -m bench.idle_gap; BENCHMARKS.md, "Keep-warm"). The host,
not the server, goes cold -- a bare numpy loop slows down the same way, with no page faults -- and
only running the same code again keeps it warm. So each idle period (--keep-warm-ms, default 50 ms)
the worker runs one sample through the next width (round robin, batch 1) and the request path in
small (decode and reply, server/warmup.py). The runs stay out of the profile, the metrics (except
their own counter) and the statistics; admission counts a run as the worker's busy time, so no
deadline is planned through it; and a run that takes long stretches the period so keeping warm never
takes more than 5% of one core.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

__all__ = ["KeepWarm"]

log = logging.getLogger("widthwise.engine")

MAX_DUTY = 0.05  # at most this share of one core goes to keeping warm


class KeepWarm:
    """What the worker runs when the queue has been empty for ``idle_s``."""

    def __init__(self, runtime, widths: tuple[float, ...], sample: np.ndarray, idle_s: float,
                 touches: tuple[Callable[[], None], ...] = ()) -> None:
        """``sample`` is one input ([1, C, H, W]) as the handlers build it; ``touches`` run after each
        inference (the request path in small: server/warmup.py)."""
        self.runtime = runtime
        self.touches = touches
        self.widths = widths
        self.sample = sample
        self.idle_s = idle_s
        self.runs = 0
        self._next = len(widths) - 1  # widest first: it is the one a light load is served at
        self._wait_s = idle_s

    def wait_s(self) -> float:
        """How long the queue must stay empty before the next run."""
        return self._wait_s

    def width(self) -> float:
        return self.widths[self._next]

    def run(self) -> float:
        """One warm-up inference at the current width; returns its seconds and moves to the next width."""
        width = self.widths[self._next]
        start = time.monotonic()
        try:
            self.runtime.run(width, self.sample)
        except Exception:  # never let keeping warm take the worker down; real batches report their own errors
            log.warning("keep-warm run at width %s failed", width, exc_info=True)
        for touch in self.touches:
            try:
                touch()
            except Exception:
                log.warning("keep-warm touch %r failed", touch, exc_info=True)
        elapsed = time.monotonic() - start
        self.runs += 1
        self._next = (self._next - 1) % len(self.widths)
        # Stretch the idle period when a run is expensive (a wide model on a slow core).
        self._wait_s = max(self.idle_s, elapsed / MAX_DUTY)
        return elapsed
