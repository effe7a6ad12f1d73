"""Load-adaptive policies: ``slack`` (SlackFit-style) and ``feedback`` (AIMD width ceiling).

``slack`` is in the spirit of SuperServe's SlackFit (NSDI 2025): at dispatch it
looks at the queued requests' deadlines and picks the (width, batch) pair from
the profile that serves the urgent requests within the most urgent one's slack,
at the widest width that allows it; it widens again as the queue drains.

``feedback`` is in the spirit of Clipper's AIMD batching: a width ceiling moves
down multiplicatively on deadline misses or a p99 over the SLO and up
additively while latency stays well under it.
"""

from __future__ import annotations

import collections
import threading

from .base import Decision, DispatchView, QueuedItem, Reason
from .builtin import MaxWidthPolicy, budget_width, keeps_up, pinned_decision, take_batch, widest_alone
from .tuning import TUNING, Tuning

__all__ = ["SlackPolicy", "FeedbackPolicy"]


class SlackPolicy:
    """The widest width at which serving the most urgent requests now still lets every
    other queued request meet its deadline afterwards (at the narrowest width, in full
    batches) -- a feasibility look-ahead that ``max-width`` does not make."""

    name = "slack"

    def __init__(self, tuning: Tuning = TUNING) -> None:
        self.target_utilization = tuning.slack_utilization

    def _sustainable(self, view: DispatchView, width: float) -> bool:
        """Could the device keep up with the offered load at this width, at the target utilization?

        Without this look at the arrival rate, every dispatch would take the widest width its own
        queue allows and the backlog would outgrow the deadlines (``keeps_up``)."""
        return keeps_up(view, width, self.target_utilization)

    def select(self, view: DispatchView) -> Decision:
        pinned = pinned_decision(view)
        if pinned:
            return pinned
        candidates = [i for i in view.queue if i.width is None]
        head = candidates[0]
        if not head.has_budget:
            batch = take_batch(view.queue, None, view.max_batch_size)
            return Decision(view.widths[-1], tuple(i.id for i in batch), Reason.NO_BUDGET)
        allowed = [w for w in view.widths if w == view.widths[0] or self._sustainable(view, w)]
        for width in reversed(allowed):
            batch = self._batch_at(view, candidates, width)
            if batch and self._rest_feasible(view, candidates, batch, width):
                reason = Reason.BUDGET if width >= budget_width(view, head) else Reason.LOAD
                return Decision(width, tuple(i.id for i in self._without_patient(view, batch, width, allowed)), reason)
        # Overloaded: someone will miss. Serve as many of the most urgent as fit the head's slack.
        batch = self._batch_at(view, candidates, view.widths[0])
        if batch:
            return Decision(view.widths[0], tuple(i.id for i in batch), Reason.LOAD)
        return Decision(view.widths[0], (head.id,), Reason.FALLBACK)

    def observe(self, width: float, latency_s: float, budget_s: float | None, deadline_met: bool) -> None:
        pass  # decisions come from the queue and the profile alone

    def _batch_at(self, view: DispatchView, candidates: list[QueuedItem], width: float) -> list[QueuedItem]:
        """The longest EDF prefix that ``width`` finishes within the most urgent request's slack."""
        slack = candidates[0].deadline - view.now
        batch: list[QueuedItem] = []
        samples = 0
        for item in candidates:
            samples += item.samples
            if samples > view.max_batch_size or view.service(width, samples) > slack:
                break
            batch.append(item)
        return batch

    def _without_patient(
        self, view: DispatchView, batch: list[QueuedItem], width: float, allowed: list[float]
    ) -> list[QueuedItem]:
        """Drop requests that could wait for this batch (and those dropped before them) and
        still get a wider sustainable width; the head always stays."""
        start = view.now + view.service(width, _samples(batch))
        kept = [batch[0]]
        for item in batch[1:]:
            if widest_alone(view, item, start, allowed) > width:
                start += view.service(view.widths[0], item.samples)
            else:
                kept.append(item)
        return kept

    def _rest_feasible(
        self, view: DispatchView, candidates: list[QueuedItem], batch: list[QueuedItem], width: float
    ) -> bool:
        """Can everything left behind still finish in time at the narrowest width?"""
        chosen = {i.id for i in batch}
        finish = view.now + view.service(width, _samples(batch))
        chunk: list[QueuedItem] = []
        rest = [i for i in candidates if i.id not in chosen]
        for n, item in enumerate(rest):
            chunk.append(item)
            if _samples(chunk) >= view.max_batch_size or n == len(rest) - 1:
                finish += view.service(view.widths[0], _samples(chunk))
                if any(i.deadline < finish for i in chunk):
                    return False
                chunk = []
        return True


def _samples(items) -> int:
    return sum(i.samples for i in items)


class FeedbackPolicy:
    """``max-width`` under an AIMD-controlled width ceiling.

    Every ``period`` budgeted requests the controller looks at the last
    ``window``: any deadline miss or a p99 latency/budget ratio above
    ``high`` halves the ceiling's index (multiplicative decrease); a p99
    ratio below ``low`` raises it by one (additive increase).
    """

    name = "feedback"

    def __init__(
        self, widths: tuple[float, ...], window: int = 100, period: int = 20, low: float = 0.6, high: float = 0.95
    ) -> None:
        self.widths = widths
        self.ceiling = len(widths) - 1
        self.window: collections.deque[tuple[float, bool]] = collections.deque(maxlen=window)
        self.period = period
        self.low, self.high = low, high
        self._since_update = 0
        self._inner = MaxWidthPolicy()
        self._lock = threading.Lock()

    def select(self, view: DispatchView) -> Decision:
        decision = self._inner.select(view)
        with self._lock:
            cap = self.widths[self.ceiling]
        if decision.reason == Reason.PINNED or decision.width <= cap:
            return decision
        return Decision(cap, decision.request_ids, Reason.FEEDBACK)

    def observe(self, width: float, latency_s: float, budget_s: float | None, deadline_met: bool) -> None:
        if budget_s is None:
            return
        with self._lock:
            self.window.append((latency_s / budget_s, deadline_met))
            self._since_update += 1
            if self._since_update < self.period:
                return
            self._since_update = 0
            ratios = sorted(r for r, _ in self.window)
            p99 = ratios[min(len(ratios) - 1, int(0.99 * len(ratios)))]
            recent_miss = not all(met for _, met in list(self.window)[-self.period:])
            if recent_miss or p99 > self.high:
                self.ceiling //= 2
            elif p99 < self.low and self.ceiling < len(self.widths) - 1:
                self.ceiling += 1
