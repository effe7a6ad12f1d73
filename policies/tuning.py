"""The policies' tuned numbers, in one place: each says its rule, its value and the BENCHMARKS.md
heading that measured it. A variant worth comparing is a ``Tuning`` with other numbers (bench/ passes
them); the rules themselves are the code."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TUNING", "Tuning"]


@dataclass(frozen=True)
class Tuning:
    # max-width plans for this quantile of the recent observed / predicted batch times ("Tail planning").
    tail_quantile: float = 0.95
    # At the narrowest width the plain plan's bigger batch runs over the tail plan's if the recent batches give
    # it at least this chance of ending in time ("Tail planning").
    plain_batch_chance: float = 0.8
    # Arrivals during a plan are sized this many standard deviations above their Poisson mean, 1.28 being its
    # 90th percentile ("Arrivals during a plan").
    arrival_burst_z: float = 1.28
    # Offered load per unit of planned capacity max-width still accepts at a width; above 1 because the plan
    # carries the margin and batches grow under load ("Sustainable load").
    sustainable_utilization: float = 1.2
    # The same limit when the server's own per-request CPU runs on the model's cores ("Sustainable load").
    shared_core_utilization: float = 0.85
    # A batch whose earliest deadline is this many of its service times away is patient: no load limit applies
    # to it ("Sustainable load").
    patient_slack_factor: float = 4.0
    # slack keeps the device at most this busy at the width it chooses ("Policies side by side").
    slack_utilization: float = 0.7


TUNING = Tuning()
