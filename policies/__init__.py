"""Budget policies: latency profile, load signals and width selection."""

from __future__ import annotations

from models.widths import match_width

from .adaptive import FeedbackPolicy, SlackPolicy
from .base import Decision, DispatchView, LoadSignals, Policy, QueuedItem, Reason
from .builtin import FixedPolicy, MaxWidthPolicy
from .profile import LatencyProfile, batch_sizes_up_to, measure_profile, service_time
from .scheduler import Batch, Pending, RefusalReason, Refused, ScheduledRequest, Scheduler, SchedulerConfig
from .tuning import TUNING, Tuning

__all__ = [
    "Reason",
    "Decision",
    "DispatchView",
    "FixedPolicy",
    "LatencyProfile",
    "LoadSignals",
    "FeedbackPolicy",
    "MaxWidthPolicy",
    "Policy",
    "SlackPolicy",
    "QueuedItem",
    "batch_sizes_up_to",
    "make_policy",
    "measure_profile",
    "service_time",
    "Tuning",
    "TUNING",
    "Batch",
    "Pending",
    "Refused",
    "RefusalReason",
    "ScheduledRequest",
    "Scheduler",
    "SchedulerConfig",
]


def make_policy(name: str, widths: tuple[float, ...], accuracy: dict[float, float] | None = None) -> Policy:
    """Build a policy from its ``--policy`` name; ``ValueError`` names what is wrong. ``accuracy``: the
    expected accuracy of every width, when known (max-width weighs its choices by it)."""
    if name.startswith("fixed:"):
        try:
            width = float(name.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"policy {name!r}: fixed needs a number, e.g. fixed:0.5") from None
        matched = match_width(widths, width)
        if matched is None:
            raise ValueError(f"policy {name!r}: {width:g} is not one of the model's widths {widths}")
        return FixedPolicy(matched)
    if name == "max-width":
        known = accuracy is not None and all(accuracy.get(w) is not None for w in widths)
        return MaxWidthPolicy({w: float(accuracy[w]) for w in widths} if known else None)
    if name == "slack":
        return SlackPolicy()
    if name == "feedback":
        return FeedbackPolicy(tuple(widths))
    raise ValueError(f"unknown policy {name!r}; choose {', '.join(POLICY_NAMES)} or fixed:<width>")


POLICY_NAMES = ("max-width", "slack", "feedback")
