"""Run batches on a daemon thread with a time bound, so one hung batch cannot stall the server.

A call that outlives its timeout raises :class:`BatchTimeout`; its thread is
abandoned (Python cannot kill it) and a fresh one serves the next batch.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

__all__ = ["BatchTimeout", "BoundedExecutor"]


class BatchTimeout(Exception):
    pass


class BoundedExecutor:
    def __init__(self, name: str = "widthwise-batch") -> None:
        self.name = name
        self.abandoned = 0
        self._start()

    def _start(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, args=(self._jobs,), name=self.name, daemon=True)
        self._thread.start()

    @staticmethod
    def _loop(jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # delivered to the caller
                future.set_exception(exc)

    def run(self, fn: Callable[[], Any], timeout: float | None) -> Any:
        future: Future = Future()
        self._jobs.put((fn, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            self.abandoned += 1
            self._jobs.put(None)  # the stuck thread exits if it ever returns
            self._start()
            raise BatchTimeout(f"batch did not finish within {timeout:g} s") from None

    def close(self) -> None:
        self._jobs.put(None)
