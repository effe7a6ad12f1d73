"""bench.ceiling's bound: the share of arrivals one core can answer."""

import pytest

from bench.ceiling import attainment_ceiling


def test_a_core_that_keeps_up_bounds_nothing():
    assert attainment_ceiling(200.0, cost_ms=4.0) == 1.0  # 0.8 of the core
    assert attainment_ceiling(250.0, cost_ms=4.0, refusal_ms=1.0) == 1.0  # exactly the core


def test_beyond_the_core_free_refusals_leave_capacity_over_rate():
    assert attainment_ceiling(500.0, cost_ms=4.0) == pytest.approx(250.0 / 500.0)


def test_refusals_that_cost_cpu_lower_the_bound():
    # 500/s arrive, answers cost 4 ms, refusals 1 ms: a * 4 + (500 - a) * 1 = 1000 ms -> a = 500 / 3
    assert attainment_ceiling(500.0, cost_ms=4.0, refusal_ms=1.0) == pytest.approx((500.0 / 3) / 500.0)
    # refusing alone fills the core: nothing can be answered
    assert attainment_ceiling(2000.0, cost_ms=4.0, refusal_ms=1.0) == 0.0
