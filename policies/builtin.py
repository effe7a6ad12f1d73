"""Width-selection policies: ``fixed:<width>`` and ``max-width``."""

from __future__ import annotations

from typing import Sequence

from .base import Decision, DispatchView, QueuedItem, Reason

__all__ = ["FixedPolicy", "MaxWidthPolicy", "take_batch", "budget_width", "widest_alone", "pinned_decision"]


def take_batch(queue, width: float | None, max_samples: int) -> list[QueuedItem]:
    """EDF-ordered requests that may share a batch with the head.

    Requests pinned to a width only batch with requests pinned to the same
    width; unpinned ones only with unpinned ones. The head is always taken.
    """
    batch: list[QueuedItem] = []
    samples = 0
    for item in queue:
        if item.width != width:
            continue
        if batch and samples + item.samples > max_samples:
            break
        batch.append(item)
        samples += item.samples
    return batch


def widest_alone(view: DispatchView, item: QueuedItem, start: float, widths: Sequence[float] | None = None) -> float:
    """The widest of ``widths`` (default: all) that ``item`` could get running alone from ``start``;
    the narrowest width when none fits."""
    remaining = item.deadline - start
    for width in reversed(widths or view.widths):
        if view.service(width, item.samples) <= remaining:
            return width
    return view.widths[0]


def budget_width(view: DispatchView, item: QueuedItem) -> float:
    """The widest width an idle server would give ``item``: its budget alone decides."""
    return widest_alone(view, item, item.arrival)


def _without_patient(view: DispatchView, batch: list[QueuedItem], width: float, samples: int) -> tuple[int, ...]:
    """Ids of ``batch`` minus the requests that can wait for this batch and still get a wider width.

    Without this, a request with a generous budget would be dragged down to the
    width of an urgent one it happens to be batched with.
    """
    batch_end = view.now + view.service(width, samples)
    head = batch[0]
    return tuple(i.id for i in batch if i is head or widest_alone(view, i, batch_end) <= width)


def pinned_decision(view: DispatchView) -> Decision | None:
    head = view.queue[0]
    if head.width is None:
        return None
    batch = take_batch(view.queue, head.width, view.max_batch_size)
    return Decision(head.width, tuple(i.id for i in batch), Reason.PINNED)


class FixedPolicy:
    """Every unpinned request runs at one width: the baseline adaptive policies are judged against."""

    def __init__(self, width: float) -> None:
        self.width = width
        self.name = f"fixed:{width:g}"

    def select(self, view: DispatchView) -> Decision:
        pinned = pinned_decision(view)
        if pinned:
            return pinned
        batch = take_batch(view.queue, None, view.max_batch_size)
        return Decision(self.width, tuple(i.id for i in batch), Reason.FIXED)

    def observe(self, width: float, latency_s: float, budget_s: float | None, deadline_met: bool) -> None:
        pass


class MaxWidthPolicy:
    """The widest width whose predicted completion fits the most urgent request's remaining budget.

    The batch is every compatible queued request up to the max batch size; if
    even the narrowest width cannot finish that batch in time, the batch
    shrinks; if nothing fits, the narrowest width runs (reason ``fallback``).
    """

    name = "max-width"

    def select(self, view: DispatchView) -> Decision:
        pinned = pinned_decision(view)
        if pinned:
            return pinned
        batch = take_batch(view.queue, None, view.max_batch_size)
        head = batch[0]
        ids = tuple(i.id for i in batch)
        if not head.has_budget:
            return Decision(view.widths[-1], ids, Reason.NO_BUDGET)
        remaining = head.deadline - view.now
        samples = sum(i.samples for i in batch)
        for width in reversed(view.widths):
            if view.service(width, samples) <= remaining:
                reason = Reason.BUDGET if width >= budget_width(view, head) else Reason.LOAD
                ids = _without_patient(view, batch, width, samples)
                return Decision(width, ids, reason)
        narrowest = view.widths[0]
        while len(batch) > 1:
            batch.pop()
            samples = sum(i.samples for i in batch)
            if view.service(narrowest, samples) <= remaining:
                return Decision(narrowest, tuple(i.id for i in batch), Reason.LOAD)
        return Decision(narrowest, ids, Reason.FALLBACK)

    def observe(self, width: float, latency_s: float, budget_s: float | None, deadline_met: bool) -> None:
        pass
