"""The host probe: the event loop's lag feeds the reserve and its gauge; request CPU is counted only on
cores shared with the model."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from policies.deadline import Deadlines
from server.engine import host_probe
from server.engine.host_probe import HostProbe
from server.metrics import Metrics


def probe_with(registry: CollectorRegistry, usable: int, monkeypatch) -> HostProbe:
    monkeypatch.setattr(host_probe, "usable_cpus", lambda: usable)
    probe = HostProbe(Deadlines(), Metrics(registry, "m"))
    probe.read_host()
    return probe


@pytest.mark.parametrize("device,threads,usable,shares", [
    ("cpu", 1, 1, True), ("cpu", 1, 2, False), ("cpu", 4, 2, True), ("cuda", 8, 1, False)])
def test_the_model_shares_the_loops_cores_only_when_its_threads_take_them_all(monkeypatch, device, threads, usable,
                                                                                shares):
    probe = probe_with(CollectorRegistry(), usable, monkeypatch)
    assert not probe.shares_cores_with_model  # before the model starts: nothing to share
    probe.model_started(device, threads, worker_cpu_s=lambda: 0.0, device_speed=lambda: None)
    assert probe.shares_cores_with_model is shares


def test_a_busy_loop_raises_the_reserve_and_the_gauge_and_request_cpu_is_measured(monkeypatch):
    registry = CollectorRegistry()
    probe = probe_with(registry, 1, monkeypatch)
    probe.CPU_WINDOW_S = 0.3
    probe.model_started("cpu", 1, worker_cpu_s=lambda: 0.0, device_speed=lambda: 1.25)

    async def run() -> None:
        watch = asyncio.get_running_loop().create_task(probe.watch(lambda: True))
        for _ in range(60):  # each request costs the loop ~5 ms of CPU and delays its timers
            probe.count_request()
            end = time.thread_time() + 0.005
            while time.thread_time() < end:
                pass
            await asyncio.sleep(0.001)
        watch.cancel()

    asyncio.run(run())
    gauge = registry.get_sample_value("widthwise_event_loop_lag_seconds", {"model": "m"})
    assert gauge is not None and gauge >= 0.002
    assert probe.deadlines.loop_lag_s == gauge
    assert registry.get_sample_value("widthwise_device_speed_ratio", {"model": "m"}) == 1.25
    assert probe.request_cpu_s is not None and 0.002 < probe.request_cpu_s < 0.05


def test_before_readiness_the_lag_is_forgotten(monkeypatch):
    registry = CollectorRegistry()
    probe = probe_with(registry, 2, monkeypatch)

    async def run() -> None:
        watch = asyncio.get_running_loop().create_task(probe.watch(lambda: False))
        for _ in range(20):
            time.sleep(0.01)  # start-up work holding the loop
            await asyncio.sleep(0)
        watch.cancel()

    asyncio.run(run())
    assert probe.deadlines.loop_lag_s == 0.0
    assert registry.get_sample_value("widthwise_event_loop_lag_seconds", {"model": "m"}) is None
    assert probe.request_cpu_s is None  # spare cores: nothing charged against the model
