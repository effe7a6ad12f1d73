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


def test_the_ideal_server_answers_in_arrival_order_and_refuses_only_what_would_be_late():
    from bench.ceiling import ideal_on_time

    # three at once, 1 s each, 2.5 s budget: the third would end at 3 s
    assert ideal_on_time([0.0, 0.0, 0.0], cost_s=1.0, refusal_s=0.0, budget_s=2.5) == 2
    # a refusal takes the core for 0.5 s: the fourth would start at 2.5 s and is refused too
    assert ideal_on_time([0.0, 0.0, 0.0, 0.0], cost_s=1.0, refusal_s=0.5, budget_s=2.5) == 2
    # the core idles between spaced arrivals: all on time
    assert ideal_on_time([0.0, 2.0, 4.0], cost_s=1.0, refusal_s=0.5, budget_s=1.0) == 3


def test_the_ideal_server_is_bounded_by_the_core_and_by_waiting():
    from bench.ceiling import ideal_attainment

    assert ideal_attainment(100.0, cost_ms=5.0, refusal_ms=0.0, budget_ms=4.0) == 0.0  # no answer fits the budget
    assert (
        ideal_attainment(60.0, cost_ms=5.0, refusal_ms=0.0, budget_ms=50.0) > 0.99
    )  # 0.3 of the core, 10 services of slack
    overloaded = ideal_attainment(600.0, cost_ms=5.0, refusal_ms=0.0, budget_ms=50.0)
    assert overloaded <= attainment_ceiling(600.0, 5.0) + 0.02  # not above what the core can do (Poisson count noise)
    # near saturation waiting costs what the throughput bound does not see
    assert ideal_attainment(190.0, cost_ms=5.0, refusal_ms=0.0, budget_ms=20.0) < attainment_ceiling(190.0, 5.0) - 0.03


def test_on_core_runs_there_and_gives_the_caller_its_cores_back():
    import os

    from bench.peers import on_core

    before = os.sched_getaffinity(0)
    core = min(before)
    assert on_core(core, lambda: os.sched_getaffinity(0)) == {core}
    assert os.sched_getaffinity(0) == before
    with pytest.raises(ZeroDivisionError):
        on_core(core, lambda: 1 / 0)
    assert os.sched_getaffinity(0) == before  # also when the work raises


def test_the_summary_takes_medians_per_load_and_policy_whichever_policy_went_first():
    from bench.ceiling import summarise

    def point(policy, load, attainment):
        return {"policy": policy, "load": load, "rate": 100 * load, "ceiling": 1.0, "ceiling_free_refusals": 1.0,
                "bare_ceiling": 1.0, "ideal": 0.5, "bare_ideal": 1.0, "attainment": attainment,
                "accuracy_per_sent": attainment * 0.7}

    blocks = [{"points": [point("a", 1, 0.9), point("b", 1, 0.8), point("a", 2, 0.4), point("b", 2, 0.3)]},
              {"points": [point("b", 1, 0.6), point("a", 1, 0.7), point("b", 2, 0.1), point("a", 2, 0.2)]},
              {"points": [point("a", 1, 1.0), point("b", 1, 1.0), point("a", 2, 0.3), point("b", 2, 0.2)]}]
    summary = summarise(blocks, ["a", "b"])
    assert [(s["policy"], s["load"]) for s in summary] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert [s["attainment"] for s in summary] == [0.9, 0.8, 0.3, 0.2]
    assert summary[2]["live_over_ideal"] == pytest.approx(0.6)  # median of 0.8, 0.4, 0.6
    assert summary[0]["accuracy_per_sent"] == pytest.approx(0.63)
