"""Deadline arithmetic: the reserve, the reply margin and lateness, as the engine and the simulator use them."""

from __future__ import annotations

import math

import pytest

from policies.deadline import CAP_FRACTION, FLOOR_S, OVERHEAD_START_S, Deadlines


def test_the_deadline_is_arrival_plus_budget_less_the_reserve_and_none_without_a_budget():
    deadlines = Deadlines()
    deadline = deadlines.deadline(10.0, 0.100)
    assert deadline.at == pytest.approx(10.0 + 0.100 - (FLOOR_S + OVERHEAD_START_S))
    assert deadline.met(10.099) and not deadline.met(10.101)
    endless = deadlines.deadline(10.0, None)
    assert endless.at == math.inf and endless.met(1e9) and not endless.has_budget


def test_the_reserve_learns_the_handlers_time_and_the_loops_lag_and_is_capped():
    deadlines = Deadlines(overhead_s=0.0)
    assert deadlines.reserve_s() == pytest.approx(FLOOR_S)
    for _ in range(300):
        deadlines.note_overhead(0.004)
    deadlines.note_loop_lag(0.002)
    assert deadlines.reserve_s() == pytest.approx(FLOOR_S + 0.004 + 0.002, rel=1e-3)
    assert deadlines.reserve_s(budget_s=0.020) == CAP_FRACTION * 0.020  # a quarter of a tight budget at most
    deadlines.note_overhead(-1.0)  # a negative time (clock skew) teaches nothing
    assert deadlines.overhead_s == pytest.approx(0.004, rel=1e-3)


def test_a_fixed_reserve_replaces_the_learnt_one_and_leaves_no_reply_margin():
    deadlines = Deadlines(fixed_reserve_s=0.005)
    deadlines.note_loop_lag(0.050)
    assert deadlines.reserve_s() == 0.005 and deadlines.reply_margin_s(1.0) == 0.0
    assert not deadlines.too_late(0.0, 0.100, 0.100)  # ready exactly at the budget: sent


def test_an_answer_is_too_late_when_less_than_the_reply_margin_is_left():
    deadlines = Deadlines()
    deadlines.note_loop_lag(0.003)  # reply margin 4 ms
    assert not deadlines.too_late(0.0, 0.100, 0.095)
    assert deadlines.too_late(0.0, 0.100, 0.097)
    assert deadlines.reply_margin_s(0.008) == pytest.approx(0.002)  # capped at a quarter of the budget
    assert not deadlines.too_late(0.0, None, 1e9)  # no budget: never late
