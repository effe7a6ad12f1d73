"""Width-selection policies: ``fixed:<width>`` and ``max-width``."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

from .base import Decision, DispatchView, QueuedItem, Reason
from .tuning import TUNING, Tuning

__all__ = ["FixedPolicy", "MaxWidthPolicy", "take_batch", "budget_width", "widest_alone", "pinned_decision",
           "best_split", "keeps_up", "sustainable_widths", "sustainable_utilization", "allowed_widths",
           "arrivals_lost", "tail_view"]


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


def best_split(view: DispatchView, batch: list[QueuedItem],
               allowed: Callable[[list[QueuedItem]], list[float]] | None = None,
               value: Callable[[float], float] | None = None, tuning: Tuning = TUNING) -> tuple[float, int] | None:
    """``(width, count)``: serve ``batch[:count]`` now at ``width``, chosen to maximise the value served
    (samples x ``value(width)``, default the width itself) over this batch and the one after it (the rest
    at the widest width meeting its earliest deadline), minus what requests expected to arrive while
    the plan runs lose (:func:`arrivals_lost`), after the number of samples served in time (a rest that
    no width serves in time counts none), and among equals the larger batch wins. None when the head
    cannot finish in time at any width.

    Each batch's value is weighed by its chance of ending in time (:meth:`DispatchView.on_time_chance`),
    so that of two plans that both fit the margin, the one that ends at its edge loses to a slightly
    narrower one that ends well inside it, unless its width is worth the risk: on a fine width grid a
    plan can nearly always fill the margin exactly."""
    value = value or (lambda w: w)
    head_deadline = batch[0].deadline
    samples = [0]
    for item in batch:
        samples.append(samples[-1] + item.samples)
    rest_deadline = [min(i.deadline for i in batch[k:]) if k < len(batch) else None for k in range(len(batch) + 1)]
    best, best_key = None, None
    allowed = allowed or (lambda _items: view.widths)
    # what allowed() says depends on the items only, not on the width tried: once per split point
    head_allowed: dict[int, list[float]] = {}
    rest_allowed: dict[int, list[float]] = {}
    for width in view.widths:
        for count in range(1, len(batch) + 1):
            finish = view.now + view.service(width, samples[count])
            if finish > head_deadline:
                break
            if count not in head_allowed:
                head_allowed[count] = allowed(batch[:count])
            if width not in head_allowed[count]:
                continue
            chance = view.on_time_chance(finish - view.now, head_deadline - view.now)
            utility, on_time, busy_until = value(width) * samples[count] * chance, samples[count], finish
            rest = samples[-1] - samples[count]
            if rest:
                if count not in rest_allowed:
                    rest_allowed[count] = allowed(batch[count:])
                rest_widths = rest_allowed[count]
                later = next((w for w in reversed(rest_widths)
                              if finish + view.service(w, rest) <= rest_deadline[count]), None)
                if later is not None:
                    rest_s = finish - view.now + view.service(later, rest)
                    chance = view.on_time_chance(rest_s, rest_deadline[count] - view.now)
                    utility += value(later) * rest * chance
                    on_time += rest
                    # the rest runs before newcomers (EDF) unless they have earlier deadlines than it
                    if rest_deadline[count] <= view.now + batch[0].planning_budget:
                        busy_until = finish + view.service(later, rest)
            utility -= arrivals_lost(view, batch[0], busy_until - view.now, tuning) * value(view.widths[0])
            key = (on_time, round(utility, 9), count)
            if best_key is None or key > best_key:
                best, best_key = (width, count), key
    return best


def arrivals_lost(view: DispatchView, head: QueuedItem, busy_s: float, tuning: Tuning = TUNING) -> float:
    """Requests expected to arrive in the next ``busy_s`` seconds that will miss their deadline because
    the device is busy until then (each counted as lost even at the narrowest width alone).

    A request arriving ``u`` seconds into the busy period (with the head's budget ``B``, the best guess
    for the next one's) waits ``busy_s - u`` and then needs ``t0``, the narrowest width's time for the
    batch that the arrivals of the busy period form, plus each arrival's own request CPU (HTTP,
    decoding, the reply), which runs on the model's core when the server shares it: it misses when
    ``u < busy_s + t0 - B``. With Poisson arrivals at rate ``r`` that is ``r`` times that window. The
    batch is sized for a burst, not the mean: the count ``tuning.arrival_burst_z`` standard deviations
    above it. Without this term a fine width grid lets max-width fill a tight budget exactly, and every
    request arriving meanwhile misses (BENCHMARKS.md, "Arrivals during a plan")."""
    rate = view.load.arrival_rate if view.load is not None else None
    if not rate or not head.has_budget:
        return 0.0
    expected = rate * busy_s
    arriving = max(1, min(view.max_batch_size, math.ceil(expected + tuning.arrival_burst_z * math.sqrt(expected))))
    extra = arriving * (view.load.request_cpu_s or 0.0)
    window = busy_s + view.service(view.widths[0], arriving) + extra - head.planning_budget
    return rate * min(busy_s, max(0.0, window))


def sustainable_utilization(view: DispatchView, tuning: Tuning = TUNING) -> float:
    """The utilization limit for ``view``'s load: lower when the server's own CPU shares the model's
    cores, since every arrival then also steals core time from the batch running at that moment,
    stretching it and everyone queued behind it."""
    shared = view.load is not None and bool(view.load.request_cpu_s)
    return tuning.shared_core_utilization if shared else tuning.sustainable_utilization


def keeps_up(view: DispatchView, width: float, utilization: float) -> bool:
    """Would the device keep up with the offered load at ``width`` (using at most ``utilization`` of it)?

    Per-sample cost is taken at the batch size this load forms (requests arriving during one batch-1
    run), not at the max batch size, which only heavy load reaches; the server's own per-request CPU,
    when it shares the model's cores, counts against the same capacity. No rate known: yes."""
    rate = view.load.arrival_rate if view.load is not None else None
    if not rate:
        return True
    batch = max(1, min(view.max_batch_size, round(rate * view.service(width, 1))))
    per_sample = view.service(width, batch) / batch
    return rate * (per_sample + (view.load.request_cpu_s or 0.0)) <= utilization


def sustainable_widths(view: DispatchView, utilization: float = TUNING.sustainable_utilization) -> list[float]:
    """The widths at which the device keeps up with the offered load (the narrowest always stays).

    Without this, each dispatch takes the widest width the queue's deadlines allow, even one whose
    throughput is below the arrival rate: the backlog then grows until deadlines force a narrow
    width, and requests arriving meanwhile miss. On a fine width grid this is the common case."""
    return [w for w in view.widths if w == view.widths[0] or keeps_up(view, w, utilization)]


def allowed_widths(view: DispatchView, items: list[QueuedItem], sustainable: list[float],
                   tuning: Tuning = TUNING) -> list[float]:
    """Widths max-width may give ``items`` (run as one batch): the ``sustainable`` ones; any width at
    which the batch is patient (its earliest deadline ``tuning.patient_slack_factor`` service times
    away or more: the limit protects requests that cannot wait, and a burst of long-budget requests
    would otherwise be narrowed on the burst's past rate alone); and, for a lone request with nothing
    queued behind it, any width the device could sustain at the arrival rate using all of it (the
    limit's headroom is for a backlog, and there is none; what the next arrivals lose to the wider batch
    is charged by :func:`arrivals_lost`). Excluding a width just over the limit outright made max-width
    serve the next narrower width for every batch at half the real capacity; now lone requests get it
    and batches of two or more keep to the limit, a mix that settles near it (BENCHMARKS.md,
    "Sustainable load")."""
    slack = min(i.deadline for i in items) - view.now
    samples = sum(i.samples for i in items)
    lone = len(items) == 1 and len(view.queue) == 1  # nothing queued behind it
    patient = tuning.patient_slack_factor
    return [w for w in view.widths if w in sustainable or slack >= patient * view.service(w, samples)
            or (lone and keeps_up(view, w, 1.0))]


def tail_view(view: DispatchView, quantile: float = TUNING.tail_quantile) -> DispatchView | None:
    """``view`` planning for the recent tail of batch times (:meth:`LatencyProfile.tail_ratio` at
    ``quantile``) when that runs past the margin, else None. Policies try it first and fall
    back to ``view``: admission promised what the profile plus margin allow, so a request it admitted
    is never refused for the tail."""
    tail = view.profile.tail_ratio(quantile)
    return dataclasses.replace(view, margin=tail - 1.0) if tail > 1.0 + view.margin else None


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
    """The widest width whose predicted completion fits the most urgent request's remaining budget,
    looking one batch ahead.

    Batching everything queued into one batch can force a narrow width when serving the most
    urgent requests alone at a wider width, then the rest, would meet every deadline (on a CPU a
    batch of two costs nearly two batches of one). So the policy compares splits of the
    compatible queue (EDF order, up to the max batch size): the first ``k`` requests now at width
    ``w``, the rest next at the widest width that still meets their earliest deadline; it takes the
    split that serves the most value (:func:`best_split`), among the widths at which the device keeps
    up with the arrival rate (:func:`allowed_widths`: at low load all of them).

    It plans for the recent tail of batch times (:func:`tail_view`) when some width still fits it, else
    with the profile and margin, as admission promised. At the narrowest width the tail cannot narrow
    the width, only shrink the batch, and under overload that sheds throughput when it is scarcest: there
    the plain plan's batch runs when the recent batches give it ``tuning.plain_batch_chance`` of ending in
    time. If even the narrowest width cannot finish the head in time, the narrowest runs (``fallback``).
    """

    name = "max-width"

    def __init__(self, accuracy: dict[float, float] | None = None, tuning: Tuning = TUNING) -> None:
        self.tuning = tuning
        # What a sample served at each width is worth: its expected accuracy when the model card has
        # one for every width (made non-decreasing, plus a hair of width so that equal accuracies still
        # go to the wider width: at low load this policy serves the widest), else the width itself.
        self.value = None
        if accuracy:
            envelope, best = {}, 0.0
            for width in sorted(accuracy):
                best = max(best, accuracy[width])
                envelope[width] = best + 1e-6 * width
            self.value = envelope.__getitem__

    def select(self, view: DispatchView) -> Decision:
        pinned = pinned_decision(view)
        if pinned:
            return pinned
        batch = take_batch(view.queue, None, view.max_batch_size)
        head = batch[0]
        if not head.has_budget:
            return Decision(view.widths[-1], tuple(i.id for i in batch), Reason.NO_BUDGET)
        tuning = self.tuning
        sustainable = sustainable_widths(view, sustainable_utilization(view, tuning))  # once per dispatch
        allowed = None if len(sustainable) == len(view.widths) else (
            lambda items: allowed_widths(view, items, sustainable, tuning))
        plan = None
        cautious = tail_view(view, tuning.tail_quantile)
        if cautious is not None:  # plan for the recent tail when some width still fits it
            plan = best_split(cautious, batch, allowed, self.value, tuning)
            # (a lone candidate has no batch to shrink: the plain plan would be the same or wider)
            if plan is not None and plan[0] == view.widths[0] and len(batch) > 1:
                plan = self._plain_batch_if_likely(view, batch, allowed, plan)
        if plan is None:  # else the profile plus margin, as admission promised
            plan = best_split(view, batch, allowed, self.value, tuning)
        if plan is None:  # the head is late whatever runs: the narrowest, for everyone queued with it
            return Decision(view.widths[0], tuple(i.id for i in batch), Reason.FALLBACK)
        width, count = plan
        reason = Reason.BUDGET if width >= budget_width(view, head) else Reason.LOAD
        return Decision(width, tuple(i.id for i in batch[:count]), reason)

    def _plain_batch_if_likely(self, view: DispatchView, batch: list[QueuedItem],
                               allowed: Callable[[list[QueuedItem]], list[float]] | None,
                               tail_plan: tuple[float, int]) -> tuple[float, int]:
        """The plain plan's batch (profile and margin, as admission promised) when it runs at the same
        width as ``tail_plan`` and the recent batches give it ``tuning.plain_batch_chance`` of ending in
        time; else ``tail_plan``."""
        plain = best_split(view, batch, allowed, self.value, self.tuning)
        if plain is None or plain[0] != tail_plan[0]:
            return tail_plan
        planned = view.service(plain[0], sum(i.samples for i in batch[:plain[1]]))
        likely = view.on_time_chance(planned, batch[0].deadline - view.now) >= self.tuning.plain_batch_chance
        return plain if likely else tail_plan

    def observe(self, width: float, latency_s: float, budget_s: float | None, deadline_met: bool) -> None:
        pass
