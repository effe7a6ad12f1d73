"""BatchWatchdog: claims an overdue batch exactly once, and tells its worker so."""

from server.engine.watchdog import BatchWatchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(timeout_s=1.0):
    clock, hung = FakeClock(), []
    dog = BatchWatchdog(timeout_s, lambda batch, elapsed: hung.append((batch, elapsed)), clock=clock)
    return dog, clock, hung


def test_a_batch_within_its_timeout_is_left_alone():
    dog, clock, hung = make()
    token = dog.arm(["a"])
    clock.now += 0.9
    assert dog.check() is False and not dog.claimed(token)
    assert dog.disarm(token) is True
    clock.now += 5.0
    assert dog.check() is False and hung == [] and dog.hung == 0


def test_an_overdue_batch_is_claimed_once_and_its_worker_learns_it():
    dog, clock, hung = make()
    token = dog.arm(["a", "b"])
    clock.now += 1.5
    assert dog.check() is True
    assert hung == [(["a", "b"], 1.5)] and dog.hung == 1
    assert dog.check() is False  # not claimed twice
    assert dog.claimed(token)
    assert dog.disarm(token) is False  # the stuck worker must exit


def test_a_replacement_worker_is_not_confused_with_the_stuck_one():
    dog, clock, hung = make()
    stuck = dog.arm(["a"])
    clock.now += 2.0
    dog.check()
    fresh = dog.arm(["b"])
    assert dog.claimed(stuck) and not dog.claimed(fresh)
    assert dog.disarm(stuck) is False  # the stuck thread returning late does not end the fresh batch
    assert dog.disarm(fresh) is True
    assert [batch for batch, _ in hung] == [["a"]]


def test_polling_is_bounded_by_the_timeout():
    assert BatchWatchdog(0.3, print).poll_s == 0.075
    assert BatchWatchdog(30.0, print).poll_s == 1.0
    assert BatchWatchdog(0.001, print).poll_s == 0.01
