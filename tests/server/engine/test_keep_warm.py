"""Keep-warm: idle-time runs through the model (server/keep_warm.py), outside metrics and profile."""

from __future__ import annotations

import threading
import time

import httpx2
import pytest
import torch
from prometheus_client import CollectorRegistry

from policies import LatencyProfile, MaxWidthPolicy, RefusalReason, Refused
from policies.scheduler import Pending, ScheduledRequest, Scheduler, SchedulerConfig
from server.engine.keep_warm import MAX_DUTY, KeepWarm
from server.engine.worker import BatchWorker, InferenceResult
from server.metrics import Metrics
from tests.helpers import eventually, png_bytes

WIDTHS = (0.25, 0.5, 1.0)
PROFILE = LatencyProfile({w: {1: 0.001 * w, 4: 0.002 * w} for w in WIDTHS}, ewma_alpha=0.0)


class RecordingRuntime:
    device = torch.device("cpu")

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s, self.fail = delay_s, fail
        self.calls: list[tuple[float, tuple[int, ...]]] = []
        self.lock = threading.Lock()

    def run(self, width: float, batch: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls.append((width, tuple(batch.shape)))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("injected")
        return torch.full((batch.shape[0], 3), width)


def test_runs_widest_first_then_round_robin_and_touches():
    runtime, touched = RecordingRuntime(), []
    keep = KeepWarm(runtime, WIDTHS, torch.zeros(1, 1, 4, 4), idle_s=0.1, touches=(lambda: touched.append(1),))
    for _ in range(4):
        keep.run()
    assert [w for w, _ in runtime.calls] == [1.0, 0.5, 0.25, 1.0]
    assert all(shape == (1, 1, 4, 4) for _, shape in runtime.calls)
    assert touched == [1, 1, 1, 1] and keep.runs == 4


def test_an_expensive_run_stretches_the_idle_period_to_the_duty_cap():
    keep = KeepWarm(RecordingRuntime(delay_s=0.02), WIDTHS, torch.zeros(1, 1, 4, 4), idle_s=0.1)
    assert keep.wait_s() == 0.1
    elapsed = keep.run()
    assert elapsed >= 0.02
    assert keep.wait_s() == pytest.approx(elapsed / MAX_DUTY)  # >= 0.4 s: at most 5% of a core
    cheap = KeepWarm(RecordingRuntime(), WIDTHS, torch.zeros(1, 1, 4, 4), idle_s=0.1)
    cheap.run()
    assert cheap.wait_s() == 0.1


def test_failures_in_a_run_or_a_touch_do_not_escape():
    def broken_touch():
        raise ValueError("touch")

    keep = KeepWarm(RecordingRuntime(fail=True), WIDTHS, torch.zeros(1, 1, 4, 4), idle_s=0.1, touches=(broken_touch,))
    keep.run()
    assert keep.runs == 1


def test_wait_for_work_times_out_when_idle_and_wakes_for_a_request():
    scheduler = Scheduler(MaxWidthPolicy(), PROFILE, WIDTHS, SchedulerConfig())
    began = time.monotonic()
    assert scheduler.wait_for_work(0.05) is False
    assert time.monotonic() - began >= 0.04
    threading.Timer(0.05, lambda: scheduler.admit(Pending(
        ScheduledRequest(1, 1, None, float("inf"), time.monotonic(), None, torch.zeros(1, 1)), lambda v: None))).start()
    began = time.monotonic()
    assert scheduler.wait_for_work(5.0) is True
    assert time.monotonic() - began < 2.0
    scheduler.close()
    assert scheduler.wait_for_work(5.0) is True


def test_admission_counts_a_keep_warm_run_as_busy_time():
    scheduler = Scheduler(MaxWidthPolicy(), PROFILE, WIDTHS, SchedulerConfig(margin=0.0))
    now = time.monotonic()
    # 1.5 ms of budget: the narrowest width (0.25 ms) fits an idle worker ...
    scheduler.precheck(None, 0.0015, deadline=now + 0.0015)
    scheduler.reserve_worker(0.002)
    # ... but not one still busy for 2 ms with a keep-warm run
    with pytest.raises(Refused) as refused:
        scheduler.precheck(None, 0.0015, deadline=now + 0.0015)
    assert refused.value.reason is RefusalReason.OVERLOADED
    scheduler.release_worker()
    scheduler.precheck(None, 0.0015, deadline=time.monotonic() + 0.0015)


def test_worker_keeps_warm_when_idle_and_leaves_metrics_and_profile_alone():
    runtime = RecordingRuntime()
    registry = CollectorRegistry()
    profile = LatencyProfile({w: {1: 0.001 * w, 4: 0.002 * w} for w in WIDTHS}, ewma_alpha=1.0)
    before = {w: profile.predict(w, 1) for w in WIDTHS}
    scheduler = Scheduler(MaxWidthPolicy(), profile, WIDTHS, SchedulerConfig(max_batch_size=4))
    keep = KeepWarm(runtime, WIDTHS, torch.zeros(1, 1, 2, 2), idle_s=0.01)
    worker = BatchWorker(scheduler, runtime, WIDTHS, profile, MaxWidthPolicy(), Metrics(registry, "m"), 5.0,
                         on_death=lambda message: None, keep_warm=keep)
    worker.start()
    try:
        assert eventually(lambda: keep.runs >= 6, True, 2.0) is True
        assert {w for w, _ in runtime.calls} == set(WIDTHS)
        assert {w: profile.predict(w, 1) for w in WIDTHS} == before  # idle runs are not observed
        assert registry.get_sample_value("widthwise_keep_warm_runs_total", {"model": "m"}) >= 6
        assert (
            registry.get_sample_value("widthwise_inference_duration_seconds_count", {"model": "m", "width": "1.0"})
            is None
        )
        # a request still gets its own batch and answer
        answered = threading.Event()
        result = {}

        def resolve(value):
            result["value"] = value
            answered.set()

        scheduler.admit(Pending(ScheduledRequest(1, 1, None, float("inf"), time.monotonic(), None,
                                                 torch.ones(1, 1, 2, 2)), resolve))
        assert answered.wait(5)
        assert isinstance(result["value"], InferenceResult) and result["value"].width == 1.0
        assert runtime.calls.count((1.0, (1, 1, 2, 2))) >= 1
        assert registry.get_sample_value("widthwise_batch_size_count", {"model": "m", "width": "1.0"}) == 1
    finally:
        scheduler.close()
        worker.join(5)


@pytest.mark.live
def test_live_server_keeps_warm_while_idle_and_counts_only_real_requests(live_server):
    server = live_server("--keep-warm-ms", "20", env={"WIDTHWISE_KEEP_WARM_MS": "20"})

    def runs() -> float:
        text = httpx2.get(server.url + "/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("widthwise_keep_warm_runs_total"))

    assert eventually(lambda: runs() >= 3, True, 5.0) is True
    r = httpx2.post(server.url + "/v1/classify", content=png_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 200
    text = httpx2.get(server.url + "/metrics").text
    served = [line for line in text.splitlines() if line.startswith("widthwise_requests_total")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in served) == 1.0
    assert server.output().count("widthwise.access") == 1  # only the request above is logged
