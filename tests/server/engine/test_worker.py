"""The batch worker on its own: a fake runtime, the real scheduler, a fresh metrics registry."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from prometheus_client import CollectorRegistry

from policies import LatencyProfile, MaxWidthPolicy, Reason, RefusalReason, Refused
from policies.scheduler import Pending, ScheduledRequest, Scheduler, SchedulerConfig
from server.engine.errors import InferenceFailed
from server.engine.worker import BatchWorker, InferenceResult
from server.metrics import Metrics

WIDTHS = (0.5, 1.0)
PROFILE = LatencyProfile({0.5: {1: 0.001, 4: 0.002}, 1.0: {1: 0.002, 4: 0.004}}, ewma_alpha=0.0)


class FakeRuntime:
    """Logits are the width repeated, one row per sample; ``fail(width, samples)`` may raise first."""

    device = torch.device("cpu")

    def __init__(self, fail=None) -> None:
        self.fail = fail
        self.calls: list[tuple[float, int]] = []

    def run(self, width: float, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append((width, int(batch.shape[0])))
        if self.fail is not None:
            self.fail(width, int(batch.shape[0]))
        return torch.full((batch.shape[0], 3), width)


def request(i: int, samples: int = 1, width: float | None = None) -> ScheduledRequest:
    return ScheduledRequest(i, samples, width, float("inf"), time.monotonic(), None, torch.zeros(samples, 1))


def make_worker(runtime, deaths=None, nice=0):
    registry = CollectorRegistry()
    scheduler = Scheduler(MaxWidthPolicy(), PROFILE, WIDTHS, SchedulerConfig(max_batch_size=4, margin=0.0))
    worker = BatchWorker(scheduler, runtime, WIDTHS, PROFILE, MaxWidthPolicy(), Metrics(registry, "m"), 5.0,
                         on_death=(deaths.append if deaths is not None else lambda message: None), nice=nice)
    return worker, scheduler, registry


def answers(items: int):
    results, done = {}, threading.Event()

    def resolver(i):
        def resolve(value):
            results[i] = value
            if len(results) == items:
                done.set()
        return resolve

    return results, done, resolver


def test_serves_each_request_its_rows_of_one_batch():
    runtime = FakeRuntime()
    worker, scheduler, registry = make_worker(runtime)
    results, done, resolver = answers(2)
    scheduler.admit(Pending(request(1, samples=2), resolver(1)))
    scheduler.admit(Pending(request(2, samples=1), resolver(2)))
    worker.start()
    assert done.wait(5)
    scheduler.close()
    worker.join(5)
    assert runtime.calls == [(1.0, 3)]  # no budget: one batch at the widest width
    assert all(isinstance(r, InferenceResult) and r.reason is Reason.NO_BUDGET for r in results.values())
    assert results[1].logits.shape == (2, 3) and results[2].logits.shape == (1, 3) and results[1].batch_samples == 3
    assert registry.get_sample_value("widthwise_batch_size_sum", {"model": "m", "width": "1.0"}) == 3


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread nice here")
def test_batches_run_at_a_lower_priority_than_the_rest_of_the_process():
    """--worker-nice: the inference thread yields the core to the event loop; other threads keep theirs."""
    priorities = []

    class RecordingRuntime(FakeRuntime):
        def run(self, width, batch):
            priorities.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().run(width, batch)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker, scheduler, _ = make_worker(RecordingRuntime(), nice=3)
    results, done, resolver = answers(1)
    scheduler.admit(Pending(request(1), resolver(1)))
    worker.start()
    assert done.wait(5)
    scheduler.close()
    worker.join(5)
    assert priorities == [min(19, mine + 3)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_out_of_memory_splits_then_steps_down():
    def fail(width, samples):
        if samples > 1 or width > 0.5:
            raise torch.cuda.OutOfMemoryError("simulated")

    runtime = FakeRuntime(fail)
    worker, scheduler, _ = make_worker(runtime)
    results, _, resolver = answers(2)
    items = [Pending(request(1), resolver(1)), Pending(request(2), resolver(2))]
    worker._serve(items, 1.0, Reason.BUDGET)
    assert runtime.calls == [(1.0, 2), (1.0, 1), (0.5, 1), (1.0, 1), (0.5, 1)]
    assert [results[i].width for i in (1, 2)] == [0.5, 0.5] and results[1].reason is Reason.FALLBACK


def test_an_error_fails_only_its_batch():
    runtime = FakeRuntime(lambda width, samples: (_ for _ in ()).throw(RuntimeError("device fault")))
    worker, _, _ = make_worker(runtime)
    results, _, resolver = answers(1)
    worker._serve([Pending(request(1), resolver(1))], 1.0, Reason.BUDGET)
    assert isinstance(results[1], InferenceFailed) and str(results[1]) == "inference failed: RuntimeError"


def test_a_dying_loop_answers_its_batch_refuses_the_queue_and_reports():
    deaths: list[str] = []
    runtime = FakeRuntime()
    worker, scheduler, _ = make_worker(runtime, deaths)

    def broken(*args, **kwargs):
        raise KeyError("bug")

    worker._serve = broken
    results, done, resolver = answers(3)
    for i in (1, 2, 3):
        scheduler.admit(Pending(request(i, width=0.5 if i == 1 else 1.0), resolver(i)))
    worker.start()
    assert done.wait(5)
    worker.join(5)
    assert isinstance(results[1], InferenceFailed)  # the batch it held
    assert all(isinstance(results[i], Refused) and results[i].reason is RefusalReason.CLOSED for i in (2, 3))
    assert deaths == ["inference worker died: KeyError: 'bug'"]
    with pytest.raises(Refused):
        scheduler.admit(Pending(request(4), lambda value: None))


class BusyRuntime(FakeRuntime):
    """Spends ``cpu_s`` of CPU in every run, as a model does."""

    def __init__(self, cpu_s: float) -> None:
        super().__init__()
        self.cpu_s = cpu_s

    def run(self, width: float, batch: torch.Tensor) -> torch.Tensor:
        end = time.thread_time() + self.cpu_s
        while time.thread_time() < end:
            pass
        return super().run(width, batch)


def test_the_workers_own_cpu_outside_the_model_is_counted_as_request_cpu():
    """Scheduling, the policy and answering cost CPU on the model's core; the model's own runs do not
    count (else the policies would plan for every batch twice)."""
    runtime = BusyRuntime(0.02)
    worker, scheduler, _ = make_worker(runtime)
    results, done, resolver = answers(5)
    for i in range(5):
        scheduler.admit(Pending(request(i, width=0.5), resolver(i)))  # pinned: one batch
    worker.start()
    assert done.wait(5)
    scheduler.close()
    worker.join(5)
    assert len(runtime.calls) >= 1
    model_cpu = 0.02 * len(runtime.calls)
    assert 0 < worker.request_cpu_s < model_cpu / 2  # some, and not the model's 20 ms per run
