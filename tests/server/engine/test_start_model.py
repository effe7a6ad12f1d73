"""Start-up's parts, each on its own: costs per width, where the latency profile comes from, and what
--save-profile writes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from models.card import ModelCard
from policies import LatencyProfile
from server.engine.startup import latency_profile, save_profile, static_costs
from server.engine.startup_cache import StartupCache
from server.settings import Settings
from tests.helpers import SYNTHETIC_PROFILE, TINY_ACCURACY, make_net


class StubRuntime:
    """What start-up asks of a runtime, with no model behind it."""

    widths = (0.25, 0.5, 0.75, 1.0)
    input_shape = (3, 16, 16)
    fingerprint = {"arch": "s_convnet6", "device": "cpu", "backend": "stub"}

    def __init__(self) -> None:
        self.runs: list[tuple[float, int]] = []
        self.warmed: list[list[int]] = []

    def run(self, width: float, batch: np.ndarray) -> np.ndarray:
        self.runs.append((width, len(batch)))
        return np.zeros((len(batch), 10), np.float32)

    def warm_up(self, batch_sizes: list[int]) -> None:
        self.warmed.append(list(batch_sizes))


def test_costs_are_counted_once_then_read_from_the_cache(tmp_path, monkeypatch):
    net = make_net("s_convnet6")
    cache = StartupCache(tmp_path, net)
    counted = static_costs(net, cache)
    assert list(counted) == list(net.widths)
    assert counted[0.25]["macs"] < counted[1.0]["macs"] and counted[0.25]["params"] < counted[1.0]["params"]
    monkeypatch.setattr("models.profiling.count_macs", lambda *a: pytest.fail("counted again"))
    assert static_costs(net, cache) == counted


def test_the_profile_is_measured_then_cached_and_warmed_up_when_read(tmp_path):
    net = make_net("s_convnet6")
    cache = StartupCache(tmp_path, net)
    settings = Settings(profile_repeats=3)
    runtime = StubRuntime()
    measured = latency_profile(runtime, runtime.widths, settings, cache, [1, 2])
    assert {w for w, _ in runtime.runs} == set(runtime.widths) and runtime.warmed == []
    again = StubRuntime()
    cached = latency_profile(again, again.widths, settings, cache, [1, 2])
    assert again.runs == [] and again.warmed == [[1, 2]]  # read, not measured; still warmed up
    assert cached.as_dict()["widths"] == measured.as_dict()["widths"]


def test_a_profile_file_must_match_the_runtime(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({**SYNTHETIC_PROFILE, "fingerprint": {**StubRuntime.fingerprint, "backend": "other"}}))
    with pytest.raises(ValueError, match="was not measured for this server"):
        latency_profile(StubRuntime(), StubRuntime.widths, Settings(profile=path), None, [1])
    path.write_text(json.dumps({**SYNTHETIC_PROFILE, "fingerprint": StubRuntime.fingerprint}))
    runtime = StubRuntime()
    profile = latency_profile(runtime, runtime.widths, Settings(profile=path), None, [1, 2])
    assert profile.predict(1.0, 1) == pytest.approx(0.5) and runtime.warmed == [[1, 2]]


def test_a_saved_profile_carries_its_fingerprint_and_the_cards_accuracy(tmp_path):
    profile = LatencyProfile.from_dict({**SYNTHETIC_PROFILE, "fingerprint": StubRuntime.fingerprint})
    card = dataclasses.replace(ModelCard.for_net(make_net("s_convnet6")), accuracy=TINY_ACCURACY)
    save_profile(tmp_path / "saved.json", profile, card)
    saved = json.loads((tmp_path / "saved.json").read_text())
    assert saved["fingerprint"] == StubRuntime.fingerprint
    assert saved["accuracy"] == {str(w): a for w, a in TINY_ACCURACY.items()}
    assert LatencyProfile.from_dict(saved).predict(0.5, 2) == pytest.approx(0.060)
