"""Metrics from records: each record_* method against a fresh registry, and no Prometheus calls elsewhere."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from policies import Reason
from server.metrics import (
    BatchRecord,
    Metrics,
    ModelRecord,
    Outcome,
    QueueRecord,
    RequestRecord,
    width_label,
)
from server.runtime.nvml import DeviceSample
from tests.helpers import REPO


@pytest.fixture
def recorder():
    registry = CollectorRegistry()
    return Metrics(registry, "m"), registry.get_sample_value


def test_request_records_count_outcomes_and_served_accuracy(recorder):
    metrics, get = recorder
    metrics.record_request(RequestRecord(Outcome.OK, 0.5, 0.004, 0.9))
    metrics.record_request(RequestRecord(Outcome.DEADLINE_MISSED, 0.5, 0.050, 0.9))
    metrics.record_request(RequestRecord(Outcome.BAD_REQUEST))
    assert get("widthwise_requests_total", {"model": "m", "width": "0.5", "outcome": "ok"}) == 1
    assert get("widthwise_requests_total", {"model": "m", "width": "0.5", "outcome": "deadline_missed"}) == 1
    assert get("widthwise_requests_total", {"model": "m", "width": "none", "outcome": "bad_request"}) == 1
    assert get("widthwise_request_duration_seconds_count", {"model": "m", "width": "0.5"}) == 2
    assert get("widthwise_expected_correct_total", {"model": "m"}) == pytest.approx(0.9)  # ok requests only


def test_batch_queue_model_and_device_records(recorder):
    metrics, get = recorder
    metrics.record_batch(BatchRecord(1.0, 3, 0.002, Reason.LOAD, (0.001, 0.002, 0.003)))
    assert get("widthwise_batch_size_sum", {"model": "m", "width": "1.0"}) == 3
    assert get("widthwise_width_selections_total", {"model": "m", "width": "1.0", "reason": "load"}) == 1
    assert get("widthwise_queue_wait_seconds_count", {"model": "m"}) == 3
    metrics.record_queue(QueueRecord(5, 7))
    assert get("widthwise_queue_depth", {"model": "m"}) == 5 and get("widthwise_inflight_requests", {"model": "m"}) == 7
    metrics.record_queue(QueueRecord(4))
    assert get("widthwise_queue_depth", {"model": "m"}) == 4 and get("widthwise_inflight_requests", {"model": "m"}) == 7
    metrics.record_model(ModelRecord("a", (0.35, 1.0), "cpu", 64))
    assert get("widthwise_width_info", {"model": "m", "width": "0.35", "position": "narrowest"}) == 1
    assert get("widthwise_model_info", {"model": "m", "arch": "a", "widths": "0.35,1.0", "device": "cpu"}) == 1
    assert get("widthwise_queue_limit", {"model": "m"}) == 64
    readings = iter([DeviceSample(0.5, 1024), DeviceSample(0.75, 2048), DeviceSample(None)])
    metrics.watch_device("cuda:0", lambda: next(readings))  # read at each scrape, not by a thread
    assert get("widthwise_gpu_utilization_ratio", {"device": "cuda:0"}) == 0.5
    assert get("widthwise_gpu_memory_used_bytes", {"device": "cuda:0"}) == 2048  # the next scrape's reading
    assert get("widthwise_gpu_utilization_ratio", {"device": "cuda:0"}) is None  # NVML failing: nothing exported


def test_one_width_spelling():
    assert [width_label(w) for w in (0.35, 1, 1.0, 2.0, None)] == ["0.35", "1.0", "1.0", "2.0", "none"]


def test_nothing_outside_metrics_py_touches_prometheus_objects():
    offenders = []
    for path in (REPO / "server").rglob("*.py"):
        if path.name == "metrics.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.labels\(|\.observe\(|\.inc\(|\.dec\(", line) and "profile.observe" not in line \
                    and "policy.observe" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_event_loop_stalls_show_in_the_loop_lag_gauge(make_client):
    """Blocking the event loop (as a saturated core does) must show in widthwise_event_loop_lag_seconds
    within about a second, and the same lag goes into the engine's reply reserve."""
    import time

    client = make_client()

    def lag() -> float | None:
        return client.registry.get_sample_value("widthwise_event_loop_lag_seconds", {"model": "tiny"})

    deadline = time.monotonic() + 2.0
    while lag() is None and time.monotonic() < deadline:  # published every ~0.1 s once ready
        time.sleep(0.05)
    assert lag() is not None and lag() < 0.02
    for _ in range(15):  # each stall makes the probe due meanwhile 10-30 ms late
        client.portal.call(time.sleep, 0.03)
        time.sleep(0.005)
    time.sleep(0.15)
    assert lag() >= 0.008
    assert client.engine.deadlines.reserve_s(1.0) >= 0.001 + lag() - 1e-9
    cpu = client.registry.get_sample_value("widthwise_request_cpu_seconds", {"model": "tiny"})
    assert (cpu is None) == (client.engine.probe.measured_cpu_s is None)  # exported whenever measured


def test_device_speed_gauge_and_models_field_follow_the_profile(make_client):
    """A device that runs slower than its start-up profile shows in widthwise_device_speed_ratio and
    /v1/models device_speed, and every width's reported latency carries it."""
    import time

    client = make_client()
    profile = client.engine.profile
    before = client.get("/v1/models").json()["models"][0]
    assert before["device_speed"] == pytest.approx(1.0)
    widest, narrowest = before["widths"][-1]["width"], before["widths"][0]["width"]
    profiled = profile.predict(widest, 1)
    for _ in range(100):  # the widest width's batches of 1 run twice as long as profiled
        profile.observe(widest, 1, 2.0 * profiled)
    after = client.get("/v1/models").json()["models"][0]
    assert after["device_speed"] == pytest.approx(2.0, rel=0.05)
    assert after["widths"][0]["latency_ms"]["1"] == pytest.approx(  # a width that never ran
        2.0 * before["widths"][0]["latency_ms"]["1"], rel=0.05)
    assert narrowest != widest
    deadline = time.monotonic() + 2.0
    gauge = None
    while time.monotonic() < deadline:  # published with the loop lag, every ~0.1 s
        gauge = client.registry.get_sample_value("widthwise_device_speed_ratio", {"model": "tiny"})
        if gauge is not None and gauge > 1.5:
            break
        time.sleep(0.05)
    assert gauge == pytest.approx(profile.speed)
