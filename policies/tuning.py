"""The policies' tuned numbers, in one place: each says its rule, its value and the BENCHMARKS.md
heading that measured it. A variant worth comparing is a ``Tuning`` with other numbers (bench/ passes
them); the rules themselves are the code."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TUNING", "Tuning"]


@dataclass(frozen=True)
class Tuning:
    tail_quantile: float = 0.95  # max-width plans for this quantile of recent batch-time ratios ("Tail planning")
    plain_batch_chance: float = 0.8  # at the narrowest width, the plain batch if this likely in time ("Tail planning")
    arrival_burst_z: float = 1.28  # arrivals during a plan sized at mean + z sd, their p90 ("Arrivals during a plan")
    sustainable_utilization: float = 1.2  # most offered load per planned capacity at a width ("Sustainable load")
    shared_core_utilization: float = 0.85  # the same when request CPU shares the model's cores ("Sustainable load")
    patient_slack_factor: float = 4.0  # a batch this many service times from its deadline: patient ("Sustainable load")
    slack_utilization: float = 0.7  # slack keeps the device at most this busy ("Policies side by side")


TUNING = Tuning()
