"""Scheduler with a fake clock: admission, EDF order, batching delay, expiry."""

import math
import threading

import pytest

from policies import LatencyProfile, MaxWidthPolicy
from policies.scheduler import Pending, RefusalReason, Refused, ScheduledRequest, Scheduler, SchedulerConfig

WIDTHS = (0.25, 1.0)
PROFILE = LatencyProfile({0.25: {1: 0.001, 4: 0.004}, 1.0: {1: 0.010, 4: 0.020}})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock, admission="reject", queue_limit=16, delay=0.0, margin=0.0, audit_share=0.0):
    config = SchedulerConfig(max_batch_size=4, max_queue_delay_s=delay, queue_limit=queue_limit, admission=admission,
                             margin=margin, audit_share=audit_share)
    return Scheduler(MaxWidthPolicy(), PROFILE, WIDTHS, config, clock)


def pending(i, clock, budget_s=None, width=None, samples=1):
    deadline = clock.now + budget_s if budget_s is not None else math.inf
    req = ScheduledRequest(i, samples, width, deadline, clock.now, budget_s)
    return Pending(req, lambda value: None)


def test_budget_below_fastest_width_is_infeasible():
    clock = Clock()
    with pytest.raises(Refused) as info:
        make(clock).admit(pending(1, clock, budget_s=0.0005))
    assert info.value.reason is RefusalReason.INFEASIBLE


def test_budget_spent_before_admission_is_infeasible_saying_what_ran_out():
    # A 25 ms budget is ample for a 1 ms service time, but 24.5 ms of it went by before the request
    # reached admission (a slow first decode): the message must say that, not blame the budget.
    clock = Clock()
    request = pending(1, clock, budget_s=0.025)
    clock.now += 0.0245
    with pytest.raises(Refused) as info:
        make(clock).admit(request)
    assert info.value.reason is RefusalReason.INFEASIBLE
    assert info.value.message.startswith("only 0.5 ms of the 25 ms budget remained at admission")
    assert info.value.message.endswith("the fastest possible service time is 1 ms at width 0.25")


def test_queue_ahead_makes_admission_refuse_as_overloaded():
    clock = Clock()
    s = make(clock)
    for i in range(10):  # the 10th waits for 2 batches of 4 ms and one of 1 ms, then runs in 1 ms: fits 10.5 ms
        s.admit(pending(i, clock, budget_s=0.0105))
    with pytest.raises(Refused) as info:  # the 11th would wait 8 ms + a batch of 2 (2 ms)
        s.admit(pending(99, clock, budget_s=0.0105))
    assert info.value.reason is RefusalReason.OVERLOADED
    assert s.depth() == 10


def test_the_queue_ahead_is_timed_at_each_requests_pinned_width():
    # Four samples pinned to 1.0 (20 ms by the profile) are due in 30 ms. 10 ms later a request with a
    # 20 ms budget, due with them, would wait 20 ms and run 1 ms: late, refused. Timed at the narrowest
    # width, as admission once did, they looked 4 ms long and it was admitted.
    clock = Clock()
    s = make(clock)
    s.admit(pending(1, clock, budget_s=0.030, width=1.0, samples=4))
    clock.now += 0.010
    with pytest.raises(Refused) as info:
        s.admit(pending(2, clock, budget_s=0.020))
    assert info.value.reason is RefusalReason.OVERLOADED
    s.admit(pending(3, clock, budget_s=0.0215))  # 21 ms fits 21.5


def test_best_effort_admits_everything_but_a_full_queue():
    clock = Clock()
    s = make(clock, admission="best_effort", queue_limit=2)
    s.admit(pending(1, clock, budget_s=0.00001))
    s.admit(pending(2, clock, budget_s=0.00001))
    with pytest.raises(Refused, match="queue is full"):
        s.admit(pending(3, clock))


def test_next_batch_is_earliest_deadline_first_and_grouped():
    clock = Clock()
    s = make(clock)
    s.admit(pending(1, clock, budget_s=5.0))
    s.admit(pending(2, clock, budget_s=0.004))
    s.admit(pending(3, clock, budget_s=1.0, width=1.0))
    batch = s.next_batch()
    assert batch.decision.width == 0.25 and [p.request.id for p in batch.items] == [2]
    s.batch_done()
    batch = s.next_batch()
    assert batch.decision.reason == "pinned" and [p.request.id for p in batch.items] == [3]
    s.batch_done()
    batch = s.next_batch()
    assert batch.decision.width == 1.0 and [p.request.id for p in batch.items] == [1]


def test_requests_that_can_no_longer_make_it_expire_at_dispatch():
    clock = Clock()
    s = make(clock)
    s.admit(pending(1, clock, budget_s=0.003))
    s.admit(pending(2, clock, budget_s=1.0))
    clock.now += 0.0025
    batch = s.next_batch()
    assert [p.request.id for p in batch.expired] == [1]
    assert [p.request.id for p in batch.items] == [2]


def test_an_audit_share_admits_every_nth_would_be_refusal_and_nothing_else():
    clock = Clock()
    s = make(clock, audit_share=0.25)
    for i in range(10):  # fill the queue: each later request would wait 10 ms
        s.admit(pending(i, clock, budget_s=0.0105))
    refused, audited = 0, []
    for i in range(100, 108):
        request = pending(i, clock, budget_s=0.0105)
        try:
            s.admit(request)
        except Refused as exc:
            assert exc.reason is RefusalReason.OVERLOADED
            refused += 1
        else:
            assert request.audited
            audited.append(i)
    assert audited == [103, 107] and refused == 6  # the 4th and 8th refusal, evenly spaced


def test_precheck_reports_an_audit_instead_of_raising():
    clock = Clock()
    s = make(clock, audit_share=0.5)
    with pytest.raises(Refused):  # the first refusal is not sampled
        s.precheck(None, 0.0005)
    assert s.precheck(None, 0.0005) is True  # the second is: served to time it
    assert s.precheck(None, 1.0) is False  # a request that fits is no audit


def test_an_audited_request_is_served_late_rather_than_expired():
    clock = Clock()
    s = make(clock, audit_share=1.0)
    late = pending(1, clock, budget_s=0.003)
    s.admit(late)
    clock.now += 0.0025  # 0.5 ms left, 1 ms needed: would expire at dispatch
    batch = s.next_batch()
    assert batch.expired == [] and [p.request.id for p in batch.items] == [1] and late.audited


def test_without_an_audit_share_nothing_is_audited():
    clock = Clock()
    s = make(clock)
    for _ in range(3):
        with pytest.raises(Refused):
            s.precheck(None, 0.0005)


def test_closed_scheduler_refuses_and_drains():
    clock = Clock()
    s = make(clock)
    s.admit(pending(1, clock))
    s.close()
    with pytest.raises(Refused, match="shutting down"):
        s.admit(pending(2, clock))
    assert [p.request.id for p in s.next_batch().items] == [1]
    s.batch_done()
    assert s.next_batch() is None


def test_batching_delay_waits_for_more_requests_then_dispatches_together():
    config = SchedulerConfig(max_batch_size=4, max_queue_delay_s=0.2, queue_limit=16, margin=0.0)
    s = Scheduler(MaxWidthPolicy(), PROFILE, WIDTHS, config)  # real clock, 200 ms window
    clock = Clock()
    clock.now = __import__("time").monotonic()
    s.admit(pending(1, clock))
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("batch", s.next_batch()))
    worker.start()
    s.admit(pending(2, clock))
    worker.join(timeout=5)
    assert [p.request.id for p in result["batch"].items] == [1, 2]


def test_admission_refuses_only_what_is_expected_to_be_late_whatever_the_margin():
    # 1.05 ms of budget fits the 1 ms narrowest batch at its median, not with a 10% margin. The margin
    # is for choosing widths; admission judges lateness by the median, so it admits the request, and
    # dispatch runs it (as fallback: no width fits with the margin) instead of refusing a request
    # that would probably have made it.
    clock = Clock()
    make(clock, margin=0.0).admit(pending(1, clock, budget_s=0.00105))
    s = make(clock, margin=0.1)
    s.admit(pending(2, clock, budget_s=0.00105))
    batch = s.next_batch()
    assert [p.request.id for p in batch.items] == [2] and batch.expired == []
    assert batch.decision.width == 0.25 and batch.decision.reason == "fallback"
    with pytest.raises(Refused) as info:  # below the median itself: refused
        make(clock, margin=0.1).admit(pending(3, clock, budget_s=0.00095))
    assert info.value.reason is RefusalReason.INFEASIBLE and "1 ms at width 0.25" in info.value.message


def test_scheduler_needs_neither_torch_nor_the_server():
    import subprocess
    import sys

    from tests.helpers import REPO

    code = ("import sys, policies.scheduler, policies.simulator; "
            "print(sorted(m for m in ('torch', 'server', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_speed_learnt_in_a_slow_spell_relaxes_while_nothing_runs():
    """A neighbour that stole the core taught the profile a speed at which no width fits: admission then
    refuses everything, no batch runs to say the spell is over, and without relaxing the server would
    refuse for as long as it is idle."""
    clock = Clock()
    profile = LatencyProfile({0.25: {1: 0.001, 4: 0.004}, 1.0: {1: 0.010, 4: 0.020}})
    for _ in range(60):
        profile.observe(0.25, 1, 0.012)  # batches ran ~10x their profile
    assert profile.speed > 8
    s = Scheduler(MaxWidthPolicy(), profile, WIDTHS, SchedulerConfig(max_batch_size=4), clock)
    s.admit(pending(1, clock, budget_s=1.0))
    batch = s.next_batch()
    s.batch_done()  # the last batch of the spell, at t = 100
    with pytest.raises(Refused) as info:  # 10 ms: the narrowest now "takes" ~11 ms
        s.admit(pending(2, clock, budget_s=0.010))
    assert info.value.reason is RefusalReason.INFEASIBLE and batch.items
    clock.now += 0.2  # still within the hold: nothing relaxes yet
    with pytest.raises(Refused):
        s.admit(pending(3, clock, budget_s=0.010))
    clock.now += 1.0  # idle for a second: back near the start-up table
    s.admit(pending(4, clock, budget_s=0.010))
    assert profile.speed < 1.5
