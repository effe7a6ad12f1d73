"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from server.runtime import Runtime

T = TypeVar("T")


def eventually(read: Callable[[], T], expected: T, timeout: float = 5.0) -> T:
    """Poll ``read()`` until it returns ``expected`` (or time runs out) and return its last value.

    For values the worker thread writes after it has answered the request (it answers first and
    does the per-batch bookkeeping afterwards), which a test may otherwise read a moment too early.
    """
    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.01)
        value = read()
    return value


class FaultInjectingRuntime(Runtime):
    """The real runtime; ``fault(width, samples)``, when set, runs before each batch and may raise
    (a device error, out of memory, a hang). Inject with ``make_client(runtime_factory=FaultInjectingRuntime)``."""

    fault: Callable[[float, int], None] | None = None

    def run(self, width, batch):
        if self.fault is not None:
            self.fault(width, int(batch.shape[0]))
        return super().run(width, batch)
