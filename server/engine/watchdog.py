"""Bound how long one batch may run, so a hung batch cannot stall the server.

The worker thread runs each batch itself and only stamps when the batch starts
(:meth:`BatchWatchdog.arm`) and ends (:meth:`BatchWatchdog.disarm`); a
supervisor thread polls the stamp. Handing every batch to another thread and
back would cost two thread wake-ups per batch (about 0.1 ms on the 2-vCPU dev
machine), which is most of what the server adds to a small request.

A batch that outlives its timeout is claimed by the supervisor, which calls
``on_hang`` with it (the engine fails its requests and starts a replacement
worker). Python cannot kill the stuck thread; if it ever returns, ``disarm``
tells it the batch is no longer its own and it must exit without touching
shared state.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ["BatchWatchdog"]


class BatchWatchdog:
    def __init__(self, timeout_s: float, on_hang: Callable[[Any, float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.on_hang = on_hang
        self.clock = clock
        self.hung = 0  # batches claimed so far
        # Detection lags the timeout by at most one poll; polling never touches the worker.
        self.poll_s = min(1.0, max(0.01, timeout_s / 4))
        self._lock = threading.Lock()
        self._running: tuple[int, float, Any] | None = None  # (token, started, batch)
        self._tokens = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="widthwise-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def arm(self, batch: Any) -> int:
        """The calling worker starts ``batch``; returns the token to :meth:`disarm` with."""
        with self._lock:
            self._tokens += 1
            self._running = (self._tokens, self.clock(), batch)
            return self._tokens

    def disarm(self, token: int) -> bool:
        """The batch ended. False when the supervisor had already claimed it (the caller must exit)."""
        with self._lock:
            if self._running is not None and self._running[0] == token:
                self._running = None
                return True
            return False

    def claimed(self, token: int | None) -> bool:
        """Whether the batch with ``token`` was given up on (its results must be dropped)."""
        if token is None:
            return False
        with self._lock:
            return self._running is None or self._running[0] != token

    def check(self) -> bool:
        """Claim the running batch if it is overdue; True when one was claimed."""
        with self._lock:
            if self._running is None:
                return False
            token, started, batch = self._running
            elapsed = self.clock() - started
            if elapsed <= self.timeout_s:
                return False
            self._running = None
            self.hung += 1
        self.on_hang(batch, elapsed)
        return True

    def _supervise(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()
