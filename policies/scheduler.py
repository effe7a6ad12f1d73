"""Earliest-deadline-first queue, admission control and batch formation: decision code, no torch, no HTTP.

The event loop calls :meth:`Scheduler.admit` (fast, under a lock); the
runtime worker thread calls :meth:`Scheduler.next_batch`, which blocks until
a batch is due, asks the policy for (width, requests) and hands it over. The
simulator drives the same class with a virtual clock through :meth:`Scheduler.poll`.
Refusals carry a :class:`RefusalReason`; the server maps reasons to HTTP statuses.
Every prediction goes through :func:`service_time`: with the planning margin where a width is
chosen (dispatch timing, the policies), without it where lateness is judged (admission, expiry),
so a request is refused only when it is expected to be late.
"""

from __future__ import annotations

import collections
import enum
import heapq
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .base import Decision, DispatchView, LoadSignals, Policy, QueuedItem, Reason
from .profile import LatencyProfile, service_time

__all__ = ["ScheduledRequest", "Pending", "RefusalReason", "Refused", "Batch", "SchedulerConfig", "Scheduler"]


@dataclass(frozen=True)
class ScheduledRequest:
    """One request as queued: immutable once admitted. ``payload`` (the input tensor) is opaque here."""

    id: int
    samples: int
    width: float | None  # pinned width, or None to let the policy choose
    deadline: float  # absolute seconds on the scheduler's clock; math.inf without a budget
    arrival: float
    budget_s: float | None
    payload: Any = None

    def queued_item(self) -> QueuedItem:
        return QueuedItem(self.id, self.samples, self.deadline, self.arrival, self.width)


@dataclass
class Pending:
    """A queued request and how to answer it (``resolve`` is called from the worker thread)."""

    request: ScheduledRequest
    resolve: Callable[[Any], None]
    audited: bool = False  # would have been refused; served anyway to time it (audit_share), never expired


class RefusalReason(enum.Enum):
    """Why a request was refused; the server maps each to a status (503 or 504)."""

    NOT_READY = "not_ready"  # the engine is starting, or failed
    CLOSED = "closed"  # shutting down
    FULL = "full"  # the queue is at its limit
    OVERLOADED = "overloaded"  # the queue ahead would make it late
    INFEASIBLE = "infeasible"  # even an idle server could not meet the deadline
    EXPIRED = "expired"  # queued, but the deadline can no longer be met at any width


class Refused(Exception):
    """Admission or dispatch refused the request."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Batch:
    decision: Decision
    items: list[Pending]
    expired: list[Pending] = field(default_factory=list)  # to be refused (EXPIRED) without running

    @property
    def samples(self) -> int:
        return sum(p.request.samples for p in self.items)


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's knobs; ``server.settings.Settings.scheduler_config()`` builds it for serve and simulate."""

    max_batch_size: int = 8
    max_queue_delay_s: float = 0.0
    queue_limit: int = 256
    admission: str = "reject"  # or "best_effort"
    margin: float = 0.1  # plan for batches this much slower than the profile
    audit_share: float = 0.0  # of the requests the deadline checks would refuse, serve this share anyway


def _infeasible_message(budget_s: float | None, remaining_s: float, service_s: float, width: float) -> str:
    """Why a deadline cannot be met: the budget itself is too small, or what is left of it after the
    time already spent (receiving and decoding the request, the reserve kept for the reply) is."""
    fastest = f"{service_s * 1e3:.3g} ms at width {width:g}"
    if budget_s is None or service_s > budget_s:
        budget = f"{budget_s * 1e3:.3g} ms" if budget_s is not None else "of the request"
        return f"latency budget {budget} is below the fastest possible service time, {fastest}"
    return (f"only {max(remaining_s, 0.0) * 1e3:.3g} ms of the {budget_s * 1e3:.3g} ms budget remained at admission "
            f"(the rest went to receiving and decoding the request and the reserve kept for the reply); "
            f"the fastest possible service time is {fastest}")


class Scheduler:
    def __init__(
        self,
        policy: Policy,
        profile: LatencyProfile,
        widths: tuple[float, ...],
        config: SchedulerConfig = SchedulerConfig(),
        clock: Callable[[], float] = time.monotonic,
        request_cpu: Callable[[], float | None] = lambda: None,
    ) -> None:
        """``request_cpu`` supplies :attr:`LoadSignals.request_cpu_s` (the server's own CPU per request on
        the model's cores) at each dispatch."""
        self.policy = policy
        self.profile = profile
        self.widths = widths
        self.config = config
        self.max_batch_size = config.max_batch_size
        self.clock = clock
        self.request_cpu = request_cpu
        self._heap: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._expected_free_at = 0.0  # when the batch being executed is expected to end (no margin)
        self._inflight_batches = 0
        self._arrivals: collections.deque[float] = collections.deque()  # offered-load window
        self._last_batch_end: float | None = None
        self._speed_relaxed_to = -math.inf
        self._refusals_seen = 0  # deadline refusals so far (audit_share)

    def service(self, width: float, samples: int) -> float:
        """Seconds planned for ``samples`` at ``width`` (profile plus margin), as the policies plan:
        dispatch timing uses it; admission and expiry judge lateness by :meth:`expected`."""
        return service_time(self.profile, width, samples, self.config.margin)

    RATE_WINDOW_S = 1.0
    # The profile learns the device's speed only from batches. If a slow spell (a CPU-hungry neighbour)
    # taught it a speed at which nothing fits, admission refuses everything, no batch runs and it never
    # learns the spell is over. So once no batch has run for SPEED_HOLD_S, the learnt speed's distance
    # to the start-up table halves every SPEED_HALF_LIFE_S: idle, the server is back to its start-up
    # beliefs within about a second, and the next batches teach it the truth (BENCHMARKS.md, "A
    # CPU-hungry neighbour").
    SPEED_HOLD_S = 0.25
    SPEED_HALF_LIFE_S = 0.2

    def _arrival_rate(self, now: float, arriving: bool = False) -> float:
        """Offered requests per second over the last window (rejected ones included: they are load too)."""
        if arriving:
            self._arrivals.append(now)
        while self._arrivals and self._arrivals[0] < now - self.RATE_WINDOW_S:
            self._arrivals.popleft()
        return len(self._arrivals) / self.RATE_WINDOW_S

    # -- event-loop side -------------------------------------------------

    def _relax_idle_speed(self, now: float) -> None:
        """No batch for a while: the learnt speed decays toward the start-up table (see SPEED_HOLD_S)."""
        if self._inflight_batches or self._last_batch_end is None:
            return
        start = max(self._last_batch_end + self.SPEED_HOLD_S, self._speed_relaxed_to)
        if now > start:
            self.profile.relax_speed(0.5 ** ((now - start) / self.SPEED_HALF_LIFE_S))
            self._speed_relaxed_to = now

    def admit(self, pending: Pending) -> None:
        """Queue ``pending`` or raise :class:`Refused` (closed, full, overloaded, infeasible)."""
        req = pending.request
        with self._cond:
            now = self.clock()
            self._relax_idle_speed(now)
            self._arrival_rate(now, arriving=True)
            self._refuse_if_closed_or_full()
            if self.config.admission == "reject" and math.isfinite(req.deadline) and not pending.audited:
                pending.audited = self._refuse_unless_audited(req)
            heapq.heappush(self._heap, (req.deadline, next(self._seq), pending))
            self._cond.notify()

    def precheck(self, width: float | None, budget_s: float | None, samples: int = 1,
                 deadline: float | None = None) -> bool:
        """Refuse early, before the handler spends CPU decoding a request that admission would refuse anyway.
        ``deadline`` defaults to now + budget; callers that saw the request earlier pass their own.
        Returns True when the request would be refused but is to be served as an audit (its ``Pending``
        is then ``audited``)."""
        now = self.clock()
        if deadline is None:
            deadline = now + budget_s if budget_s else math.inf
        probe = ScheduledRequest(-1, samples, width, deadline, now, budget_s)
        with self._cond:
            self._relax_idle_speed(now)
            self._refuse_if_closed_or_full()
            if self.config.admission == "reject" and budget_s is not None:
                return self._refuse_unless_audited(probe)
            return False

    def _refuse_unless_audited(self, req: ScheduledRequest) -> bool:
        """:meth:`_check_deadline_feasible`, except that every ``1 / audit_share``-th refusal is not
        raised: True for that request, which is served to time it."""
        try:
            self._check_deadline_feasible(req)
            return False
        except Refused:
            if self._audit_due():
                return True
            raise

    def _audit_due(self) -> bool:
        """Once per deadline refusal: whether to audit it (evenly spaced, so runs repeat)."""
        if self.config.audit_share <= 0:
            return False
        self._refusals_seen += 1
        seen, share = self._refusals_seen, self.config.audit_share
        return math.floor(seen * share) > math.floor((seen - 1) * share)

    def _refuse_if_closed_or_full(self) -> None:
        if self._closed:
            raise Refused(RefusalReason.CLOSED, "server is shutting down")
        if len(self._heap) >= self.config.queue_limit:
            raise Refused(RefusalReason.FULL, f"queue is full ({self.config.queue_limit} requests)")

    def _check_deadline_feasible(self, req: ScheduledRequest) -> None:
        """Refuse a request only when it is *expected* to be late: its own batch and the queue ahead at
        their median times (no margin), after the running batch's expected end. The margin is for
        choosing widths; here it refused requests that would have made it (BENCHMARKS.md, "Saturation")."""
        width = req.width if req.width is not None else self.widths[0]
        service = self.expected(width, req.samples)
        now = self.clock()
        remaining = req.deadline - now
        if service > remaining:  # even an idle server could not make it
            raise Refused(RefusalReason.INFEASIBLE, _infeasible_message(req.budget_s, remaining, service, width))
        wait = max(0.0, self._expected_free_at - now) + self._queue_ahead_s(req.deadline)
        if now + wait + service > req.deadline:
            raise Refused(
                RefusalReason.OVERLOADED, f"overloaded: predicted wait {wait * 1e3:.3g} ms exceeds the budget"
            )

    def _queue_ahead_s(self, deadline: float) -> float:
        """Expected seconds to run the queued requests due by ``deadline`` (earliest deadline first runs
        them before it): each at its pinned width, the others at the narrowest, in full batches."""
        samples: dict[float, int] = {}
        for due, _, pending in self._heap:
            if due <= deadline:
                req = pending.request
                width = req.width if req.width is not None else self.widths[0]
                samples[width] = samples.get(width, 0) + req.samples
        seconds = 0.0
        for width, count in samples.items():
            full, rest = divmod(count, self.max_batch_size)
            seconds += full * self.expected(width, self.max_batch_size) + (self.expected(width, rest) if rest else 0.0)
        return seconds

    def expected(self, width: float, samples: int) -> float:
        """Median seconds for ``samples`` at ``width`` (no margin): what lateness is judged by."""
        return service_time(self.profile, width, samples, 0.0)

    def depth(self) -> int:
        with self._cond:
            return len(self._heap)

    def close(self) -> None:
        """Refuse new requests; ``next_batch`` keeps returning batches until the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[Pending]:
        """Remove and return every queued request (to refuse them when no worker is left)."""
        with self._cond:
            items = [entry[2] for entry in sorted(self._heap)]
            self._heap = []
            return items

    # -- worker side ------------------------------------------------------

    def wait_for_work(self, timeout_s: float) -> bool:
        """Block until a request is queued or the scheduler closes (True), or ``timeout_s`` passes with
        the queue empty (False: the worker may use the idle time)."""
        with self._cond:
            if not self._heap and not self._closed:
                self._cond.wait(timeout_s)
            return bool(self._heap) or self._closed

    def reserve_worker(self, seconds: float) -> None:
        """The worker is busy for about ``seconds`` outside any batch (keeping the model warm):
        admission counts it as the wait before the next batch; ``release_worker`` ends it."""
        with self._cond:
            self._expected_free_at = max(self._expected_free_at, self.clock() + seconds)

    def release_worker(self) -> None:
        with self._cond:
            if not self._inflight_batches:
                self._expected_free_at = 0.0

    def batch_done(self) -> None:
        """The worker finished the batch it took (only batches with items count)."""
        with self._cond:
            self._inflight_batches -= 1
            self._expected_free_at = 0.0
            self._last_batch_end = self.clock()

    def next_batch(self, load: LoadSignals | None = None) -> Batch | None:
        """Block until a batch is due; ``None`` once closed and drained."""
        with self._cond:
            while True:
                while not self._heap:
                    if self._closed:
                        return None
                    self._cond.wait()
                due = self._dispatch_due_at()
                now = self.clock()
                if now >= due or self._closed:
                    return self._take_batch(now, load)
                self._cond.wait(due - now)

    def poll(self, now: float, load: LoadSignals | None = None) -> Batch | float | None:
        """Non-blocking twin of :meth:`next_batch` for simulations with a virtual clock.

        Returns a batch if one is due at ``now``, else the time it will be due,
        or ``None`` when the queue is empty.
        """
        with self._cond:
            if not self._heap:
                return None
            due = self._dispatch_due_at()
            if now >= due or self._closed:
                return self._take_batch(now, load)
            return due

    def _take_batch(self, now: float, load: LoadSignals | None) -> Batch:
        expired = self._pop_expired(now)
        if not self._heap:
            return Batch(Decision(self.widths[0], (), Reason.FALLBACK), [], expired)
        ordered = [p for _, _, p in sorted(self._heap)]
        view = DispatchView(
            now=now,
            queue=[p.request.queued_item() for p in ordered],
            widths=self.widths,
            profile=self.profile,
            max_batch_size=self.max_batch_size,
            margin=self.config.margin,
            load=load or LoadSignals(arrival_rate=self._arrival_rate(now), request_cpu_s=self.request_cpu()),
        )
        decision = self.policy.select(view)
        chosen = set(decision.request_ids)
        items = [p for p in ordered if p.request.id in chosen]
        self._heap = [entry for entry in self._heap if entry[2].request.id not in chosen]
        heapq.heapify(self._heap)
        self._inflight_batches += 1
        samples = sum(p.request.samples for p in items)
        self._expected_free_at = now + self.expected(decision.width, samples)
        return Batch(decision, items, expired)

    def _dispatch_due_at(self) -> float:
        """When to dispatch: at once for a full batch, else when the oldest request has waited
        ``max_queue_delay`` -- but never so late that the most urgent request loses the width
        its budget allows (waiting to fill a batch must not cost accuracy or deadlines)."""
        samples = sum(p.request.samples for _, _, p in self._heap)
        if samples >= self.max_batch_size:
            return 0.0
        oldest = min(p.request.arrival for _, _, p in self._heap)
        due = oldest + self.config.max_queue_delay_s
        head = self._heap[0][2].request
        if math.isfinite(head.deadline):
            budget = head.deadline - head.arrival
            fitting = [w for w in self.widths if self.service(w, samples) <= budget] or [self.widths[0]]
            width = head.width if head.width is not None else fitting[-1]
            due = min(due, head.deadline - self.service(width, samples))
        return due

    def _pop_expired(self, now: float) -> list[Pending]:
        """In reject mode, requests expected to miss their deadline even at the narrowest width (or
        their pinned one) if run now; a request with a chance is run rather than refused."""
        if self.config.admission != "reject":
            return []
        keep, expired = [], []
        for entry in self._heap:
            pending = entry[2]
            req = pending.request
            width = req.width if req.width is not None else self.widths[0]
            late = math.isfinite(req.deadline) and now + self.expected(width, req.samples) > req.deadline
            if late and not pending.audited and not self._audit_due():
                expired.append(pending)
            else:
                if late:
                    pending.audited = True
                keep.append(entry)
        if expired:
            self._heap = keep
            heapq.heapify(self._heap)
        return expired
