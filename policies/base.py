"""The policy interface: a pure decision over a queue snapshot.

The scheduler calls ``policy.select(view)`` whenever it can dispatch a batch.
The view holds the queued requests in earliest-deadline-first order, the
latency profile, load signals and the clock; the policy answers with the
width to run and which requests go in the batch, plus a reason that becomes
the ``reason`` label of ``widthwise_width_selections_total``.
"""

from __future__ import annotations

import bisect
import enum
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .profile import LatencyProfile, service_time

__all__ = ["QueuedItem", "LoadSignals", "DispatchView", "Decision", "Policy", "Reason"]


class Reason(enum.StrEnum):
    """Why a batch runs at its width: the ``reason`` label, header and log field (fixed set)."""

    BUDGET = "budget"  # the widest width the most urgent request's budget allows
    LOAD = "load"  # narrower than the budget allows, to keep up with the queue
    PINNED = "pinned"  # the client pinned the width
    NO_BUDGET = "no_budget"  # no budget: the widest width
    FALLBACK = "fallback"  # no width fits: the narrowest (or a narrower one after out of memory)
    FIXED = "fixed"  # fixed:<width> policy
    FEEDBACK = "feedback"  # capped by the feedback controller


@dataclass(frozen=True)
class QueuedItem:
    """What a policy may know about one queued request."""

    id: int
    samples: int
    deadline: float  # absolute, time.monotonic() seconds; math.inf without a budget
    arrival: float
    width: float | None = None  # pinned width, if any

    @property
    def has_budget(self) -> bool:
        return math.isfinite(self.deadline)

    @property
    def planning_budget(self) -> float:
        """Seconds from arrival to deadline (its budget less the server's reserve): what the policies
        assume a request arriving next will have too."""
        return self.deadline - self.arrival


@dataclass(frozen=True)
class LoadSignals:
    """Current load beyond the queue itself (which the view holds); any signal may be missing (None)
    and policies must cope."""

    arrival_rate: float | None = None  # offered requests per second, recent window
    # CPU seconds the server spends per request outside the model (HTTP, decoding, replies) on the
    # cores the model runs on: 0 or None when it has cores of its own (a GPU, spare CPU cores).
    request_cpu_s: float | None = None


@dataclass(frozen=True)
class DispatchView:
    now: float
    queue: Sequence[QueuedItem]  # earliest deadline first, never empty
    widths: tuple[float, ...]  # ascending
    profile: LatencyProfile
    max_batch_size: int
    load: LoadSignals = field(default_factory=LoadSignals)
    margin: float = 0.0  # safety margin on predicted service times (0.1 = plan for 10% slower)
    # One decision asks for the same (width, samples) many times -- ~25 per batch on four widths, ~200
    # on a 14-width grid, on the inference thread between batches -- so each answer is kept for the
    # view's life. init=False: dataclasses.replace (a view with another margin) starts a fresh one.
    _services: dict = field(default_factory=dict, init=False, compare=False, repr=False)
    _ratios: tuple | None = field(default=None, init=False, compare=False, repr=False)

    def service(self, width: float, samples: int) -> float:
        """Seconds to plan for running ``samples`` at ``width`` (:func:`~policies.profile.service_time`)."""
        key = (width, samples)
        seconds = self._services.get(key)
        if seconds is None:
            seconds = self._services[key] = service_time(self.profile, width, samples, self.margin)
        return seconds

    def on_time_chance(self, planned_s: float, seconds_left: float) -> float:
        """The chance that work planned at ``planned_s`` (this view's service times, margin included)
        ends within ``seconds_left``: the share of the recent batches whose observed / predicted time
        would have fitted (the same ratio for all of it: this device's speed drifts for seconds, not
        per batch). 1 until the profile has seen enough batches, as its tail ratio is."""
        if self._ratios is None:
            object.__setattr__(self, "_ratios", self.profile.recent_ratios())
        if not self._ratios:
            return 1.0
        limit = seconds_left * (1.0 + self.margin) / planned_s
        return bisect.bisect_right(self._ratios, limit) / len(self._ratios)


@dataclass(frozen=True)
class Decision:
    width: float
    request_ids: tuple[int, ...]
    reason: Reason


class Policy(Protocol):
    name: str

    def select(self, view: DispatchView) -> Decision: ...

    def observe(self, width: float, latency_s: float, budget_s: float | None, deadline_met: bool) -> None:
        """Feedback after each served request (controllers use it; others ignore it)."""
