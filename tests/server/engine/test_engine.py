"""The engine's two calls for HTTP: admit (before decoding) and infer."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

import models
from policies import RefusalReason, Refused


def test_admit_then_infer_returns_the_served_widths_logits(make_client, tiny_checkpoint):
    engine = make_client().engine
    admission = engine.admit(0.5, None, arrival=time.monotonic())
    assert admission.width == 0.5 and admission.budget_s is None
    x = torch.randn(2, 3, 16, 16)
    result = asyncio.run(engine.infer(admission, x.numpy()))
    with torch.inference_mode():
        expected = models.load_checkpoint(tiny_checkpoint).net(x, width=0.5)
    assert result.width == 0.5 and result.logits.shape == (2, 10)
    np.testing.assert_allclose(result.logits, expected.numpy(), atol=1e-4)


def test_admit_applies_the_default_budget_and_refuses_before_any_decoding(make_client, synthetic_profile):
    engine = make_client(profile=synthetic_profile, default_budget_ms=400).engine
    assert engine.admit(None, None, arrival=time.monotonic()).budget_s == 0.4
    assert engine.admit(None, 50.0, arrival=time.monotonic()).budget_s == 0.05
    with pytest.raises(Refused) as info:  # below the narrowest width's 10 ms (+10% margin)
        engine.admit(None, 5.0, arrival=time.monotonic())
    assert info.value.reason is RefusalReason.INFEASIBLE


def test_admit_refuses_while_starting_and_while_draining(make_client):
    from server.runtime import Runtime

    release = threading.Event()

    class HeldRuntime(Runtime):  # start-up waits here until the test lets it go on
        def __init__(self, *args, **kwargs) -> None:
            release.wait(30)
            super().__init__(*args, **kwargs)

    engine = make_client(wait=False, runtime_factory=HeldRuntime).engine
    with pytest.raises(Refused) as info:
        engine.admit(None, None, arrival=time.monotonic())
    assert info.value.reason is RefusalReason.NOT_READY
    release.set()
    assert engine.wait_ready(60)
    engine.begin_drain()
    with pytest.raises(Refused) as info:
        engine.admit(None, None, arrival=time.monotonic())
    assert info.value.reason is RefusalReason.CLOSED


def test_the_budget_counts_from_arrival(make_client, synthetic_profile):
    engine = make_client(profile=synthetic_profile).engine
    long_ago = time.monotonic() - 0.095  # 95 ms of a 100 ms budget already spent before admission
    with pytest.raises(Refused) as info:
        engine.admit(None, 100.0, arrival=long_ago)
    assert info.value.reason is RefusalReason.INFEASIBLE and "remained at admission" in info.value.message
    engine.admit(None, 100.0, arrival=time.monotonic())  # the same budget, fresh: admitted


def test_an_audited_would_be_refusal_is_served_and_its_verdict_counted(make_client, synthetic_profile):
    # The profile says 10 ms at the narrowest width: a 5 ms budget is refused, unless audited. The tiny
    # net really answers in well under 5 ms, so the audit finds the refusal needless.
    client = make_client(profile=synthetic_profile, admission_audit=1.0)
    engine = client.engine
    admission = engine.admit(None, 5.0, arrival=time.monotonic())
    assert admission.audited
    result = asyncio.run(engine.infer(admission, np.zeros((1, 3, 16, 16), np.float32)))
    assert result.audited and result.logits.shape == (1, 10)
    assert engine.answered(admission, result, total_s=0.002)
    with pytest.raises(Refused) as info:  # answered after its budget: still a 504, counted late
        engine.answered(admission, result, total_s=0.050)
    assert info.value.reason is RefusalReason.EXPIRED

    def audits(verdict):
        return client.registry.get_sample_value("widthwise_admission_audits_total",
                                                {"model": "tiny", "verdict": verdict})

    assert audits("on_time") == 1 and audits("late") == 1
    # a request admission accepts is no audit
    fits = engine.admit(None, 400.0, arrival=time.monotonic())
    assert not fits.audited and not asyncio.run(engine.infer(fits, np.zeros((1, 3, 16, 16), np.float32))).audited


@pytest.mark.slow
def test_the_reserve_grows_with_the_event_loops_scheduling_delay(make_client):
    engine = make_client(reserve_ms=None).engine
    quiet = engine.deadlines.reserve_s()  # on a busy host this is already above a quiet one's ~1.5 ms
    loop = engine._lag_watch.get_loop()

    async def stall_once():  # one long stall (a GC pause): the percentile ignores it
        time.sleep(0.08)

    asyncio.run_coroutine_threadsafe(stall_once(), loop).result(5)
    time.sleep(0.3)
    # counted, the stall would add ~80 ms; the margin is for a noisy host's other probes (CI once read
    # 8.6 ms against a quiet 1.5 ms here)
    assert engine.deadlines.reserve_s() < quiet + 0.04

    async def keep_the_loop_busy():  # a loop busy for a while: timers (and sockets) wait ~8 ms each time
        for _ in range(120):
            time.sleep(0.008)
            await asyncio.sleep(0)
        return engine.deadlines.reserve_s()

    busy = asyncio.run_coroutine_threadsafe(keep_the_loop_busy(), loop).result(10)
    assert engine.deadlines.loop_lag_s >= 0.006  # every probe waited >= 8 ms; a busy host only adds
    assert busy >= quiet + 0.005
    assert engine.deadlines.reserve_s(budget_s=0.02) == 0.005  # never more than a quarter of the budget
    time.sleep(1.5)  # a second of quiet probes: back down, at least half way, whatever the host's own noise
    assert engine.deadlines.reserve_s() < quiet + 0.5 * (busy - quiet)

@pytest.mark.slow
@pytest.mark.parametrize("cores,shared", [({0}, True), (set(range(64)), False)])
def test_the_loops_cpu_per_request_is_measured_when_it_shares_the_models_cores(make_client, monkeypatch, cores, shared):
    import server.engine.host_probe

    monkeypatch.setattr(server.engine.host_probe, "usable_cpus", lambda: len(cores))
    client = make_client()
    x = {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and client.engine.probe.request_cpu_s is None:
        assert client.post("/v2/models/tiny/infer", json=x).status_code == 200
        time.sleep(0.05)
    if shared:
        assert client.engine.probe.request_cpu_s is not None and 0 < client.engine.probe.request_cpu_s < 0.1
    else:
        assert client.engine.probe.request_cpu_s is None  # spare cores: the loop does not slow the model
