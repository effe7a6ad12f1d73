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


def make(clock, admission="reject", queue_limit=16, delay=0.0, margin=0.0):
    config = SchedulerConfig(max_batch_size=4, max_queue_delay_s=delay, queue_limit=queue_limit, admission=admission,
                             margin=margin)
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
    for i in range(9):  # the 9th waits for 2 batches of 4 ms, then runs in 1 ms: fits 10 ms
        s.admit(pending(i, clock, budget_s=0.010))
    with pytest.raises(Refused) as info:  # the 10th would wait for 3 batches
        s.admit(pending(99, clock, budget_s=0.010))
    assert info.value.reason is RefusalReason.OVERLOADED
    assert s.depth() == 9


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


def test_admission_plans_with_the_margin_as_the_policies_do():
    # 1.05 ms of budget fits the 1 ms narrowest batch, but not with a 10% margin: admitted without a
    # margin, refused with one (before, admission used the raw profile and the policies the margin,
    # so such a request was admitted and then served as `fallback`).
    clock = Clock()
    make(clock, margin=0.0).admit(pending(1, clock, budget_s=0.00105))
    with pytest.raises(Refused) as info:
        make(clock, margin=0.1).admit(pending(2, clock, budget_s=0.00105))
    assert info.value.reason is RefusalReason.INFEASIBLE and "1.1 ms at width 0.25" in info.value.message


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
