"""Deadline arithmetic, in one place: when the engine must be done with a request, what the server keeps
back from its budget, and when a ready answer is too late to send.

A request's budget counts from when the server first saw it. The engine plans with all of it but the
*reserve*: the time spent outside the engine (the handler before and after, the event loop's
scheduling delay, the client and the network). An answer that is ready is still *too late* when less
than the *reply margin* of its budget is left: the reply's turn on the event loop, the write and the
network take that long. The engine, the outcome recorder and the simulator all use this module, so
the live server and its simulation keep the same reserve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Deadline", "Deadlines", "CAP_FRACTION", "FLOOR_S"]

# Time the server cannot see (client and network), in every reserve and reply margin. Measured live
# before the reply margin existed: late 200s were 1 ms late at the median, 3 ms at p90.
FLOOR_S = 0.001
# At most this share of a budget goes to the reserve or the reply margin: the reserve only learns from
# served requests, so one that outgrew the budgets would refuse every request and never learn again.
CAP_FRACTION = 0.25
# The handler's own time outside queue and inference before any request has been timed, and how fast
# the running average of it moves.
OVERHEAD_START_S = 0.0005
OVERHEAD_ALPHA = 0.05


@dataclass(frozen=True)
class Deadline:
    """One request's limits, fixed when it is admitted and carried with it."""

    arrival: float  # when the server first saw the request (the scheduler's clock)
    budget_s: float | None  # None: the request has no deadline
    at: float  # when the engine must be done: arrival + budget - reserve; math.inf without a budget

    @property
    def has_budget(self) -> bool:
        return self.budget_s is not None

    def met(self, answered_at: float) -> bool:
        """Whether an answer at ``answered_at`` is within the budget (always, without one)."""
        return self.budget_s is None or answered_at - self.arrival <= self.budget_s


class Deadlines:
    """The reserve and reply margin a server keeps, learnt from what it observes (or fixed).

    ``fixed_reserve_s`` (``--reserve-ms``): that reserve for every request and no reply margin.
    Otherwise the reserve is :data:`FLOOR_S`, the running average of the handler's own time outside
    queue and inference (:meth:`note_overhead`), and the event loop's recent scheduling delay
    (:meth:`note_loop_lag`: bytes wait that long before the server reads them); the reply margin is
    the floor and the loop's delay, the parts outside the handler. Both are capped at
    :data:`CAP_FRACTION` of the budget. The simulator passes its modelled per-request CPU as a fixed
    ``overhead_s`` and never notes a loop lag.
    """

    def __init__(self, fixed_reserve_s: float | None = None, overhead_s: float = OVERHEAD_START_S) -> None:
        self.fixed_reserve_s = fixed_reserve_s
        self.overhead_s = overhead_s
        self.loop_lag_s = 0.0

    def reserve_s(self, budget_s: float | None = None) -> float:
        """Time kept free of ``budget_s`` for everything outside the engine."""
        if self.fixed_reserve_s is not None:
            reserve = self.fixed_reserve_s
        else:
            reserve = FLOOR_S + self.overhead_s + self.loop_lag_s
        return min(reserve, CAP_FRACTION * budget_s) if budget_s is not None else reserve

    def reply_margin_s(self, budget_s: float) -> float:
        """Time an answer still needs once it is ready (0 with a fixed reserve)."""
        if self.fixed_reserve_s is not None:
            return 0.0
        return min(FLOOR_S + self.loop_lag_s, CAP_FRACTION * budget_s)

    def deadline(self, arrival: float, budget_s: float | None) -> Deadline:
        """The deadline of a request that arrived at ``arrival`` with ``budget_s`` (None: no budget)."""
        if budget_s is None:
            return Deadline(arrival, None, math.inf)
        return Deadline(arrival, budget_s, arrival + budget_s - self.reserve_s(budget_s))

    def too_late(self, arrival: float, budget_s: float | None, ready_at: float) -> bool:
        """Whether the answer to a request that arrived at ``arrival`` with ``budget_s``, ready at
        ``ready_at``, would reach the client after its budget (never, without one)."""
        if budget_s is None:
            return False
        return ready_at - arrival + self.reply_margin_s(budget_s) > budget_s

    def note_overhead(self, seconds: float) -> None:
        """The handler's own time (outside queue and inference) of one served request."""
        if seconds >= 0:
            self.overhead_s += OVERHEAD_ALPHA * (seconds - self.overhead_s)

    def note_loop_lag(self, seconds: float) -> None:
        """The event loop's recent scheduling delay (a high percentile over about a second)."""
        self.loop_lag_s = seconds
