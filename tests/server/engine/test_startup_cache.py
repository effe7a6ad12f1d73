"""The start-up cache: exported switches, the latency profile and MACs kept between starts."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

import models
from server.engine.cached_net import CachedNet
from tests.helpers import REPO, make_net

WIDTHS = (0.25, 0.5, 0.75, 1.0)


def _logits(client, width: float) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    r = client.post("/v2/models/tiny/infer", json={"inputs": [{"name": "input", "shape": [2, 3, 16, 16],
                                                               "datatype": "FP32", "data": x.ravel().tolist()}],
                                                   "parameters": {"width": width}})
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"][0]["data"]).reshape(2, -1)


def test_a_restart_reuses_exports_profile_and_costs(make_client, tmp_path, monkeypatch, caplog, tiny_checkpoint):
    cache = tmp_path / "cache"
    first = make_client(startup_cache="on", cache_dir=cache)
    exports = list(cache.glob("export-*/*.onnx"))
    assert sorted(p.stem for p in exports) == sorted(repr(w) for w in WIDTHS)
    assert len(list(cache.glob("profile-*.json"))) == 1 and len(list(cache.glob("costs-*.json"))) == 1
    profile = first.engine.profile.as_dict()["widths"]
    reference = {w: _logits(first, w) for w in WIDTHS}
    costs = [(w["macs"], w["params"]) for w in first.get("/v1/models").json()["models"][0]["widths"]]

    # The second start must neither export nor profile nor count MACs.
    def refuse(*_args, **_kwargs):
        raise AssertionError("exported although the cache holds the switch")

    monkeypatch.setattr("server.runtime.onnx_export.export_switch_onnx", refuse)
    monkeypatch.setattr("server.engine.startup.profile_runtime", refuse)
    monkeypatch.setattr("models.profiling.count_macs", refuse)
    caplog.set_level(logging.INFO, "widthwise")
    second = make_client(startup_cache="on", cache_dir=cache)
    assert "latency profile from the cache" in caplog.text
    assert second.engine.profile.as_dict()["widths"] == profile
    assert [(w["macs"], w["params"]) for w in second.get("/v1/models").json()["models"][0]["widths"]] == costs
    net = models.load_checkpoint(tiny_checkpoint).net
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    for width in WIDTHS:
        np.testing.assert_allclose(_logits(second, width), reference[width], rtol=1e-5, atol=1e-6)
        with torch.inference_mode():
            np.testing.assert_allclose(reference[width], net(x, width=width).numpy(), rtol=1e-4, atol=1e-5)
    # The net itself came from the cache's description too: the checkpoint's weights were never read.
    assert isinstance(second.engine.net, CachedNet) and second.engine.net._net is None
    assert second.get("/v1/models").json()["models"][0]["labels"] == [f"class{i}" for i in range(10)]


@pytest.mark.slow
def test_other_weights_or_other_batch_sizes_miss_the_cache(make_client, tmp_path):
    cache = tmp_path / "cache"
    make_client(startup_cache="on", cache_dir=cache)
    other = tmp_path / "other.safetensors"
    models.save_checkpoint(make_net("s_convnet6", seed=5), other)
    make_client(startup_cache="on", cache_dir=cache, checkpoint=other)
    assert len(list(cache.glob("export-*"))) == 2 and len(list(cache.glob("profile-*.json"))) == 2
    make_client(startup_cache="on", cache_dir=cache, max_batch_size=2)  # same exports, another profile
    assert len(list(cache.glob("export-*"))) == 2 and len(list(cache.glob("profile-*.json"))) == 3


@pytest.mark.slow
def test_profiles_cached_by_code_that_ran_widths_differently_are_measured_again(make_client, tmp_path, monkeypatch):
    """An upgrade that changes how widths execute (``EXECUTION_REVISION``) or another torch/ONNX Runtime
    must not plan with the speeds the old code measured; the exports, which it does not change, stay."""
    import server.engine.startup_cache as startup_cache

    cache = tmp_path / "cache"
    make_client(startup_cache="on", cache_dir=cache)
    assert len(list(cache.glob("profile-*.json"))) == 1
    monkeypatch.setattr(startup_cache, "EXECUTION_REVISION", startup_cache.EXECUTION_REVISION + 1)
    make_client(startup_cache="on", cache_dir=cache)
    assert len(list(cache.glob("profile-*.json"))) == 2 and len(list(cache.glob("export-*"))) == 1
    real_version = startup_cache._version
    monkeypatch.setattr(startup_cache, "_version", lambda p: "0.0-other" if p == "onnxruntime" else real_version(p))
    make_client(startup_cache="on", cache_dir=cache)
    assert len(list(cache.glob("profile-*.json"))) == 3 and len(list(cache.glob("export-*"))) == 1


def test_corrupt_entries_are_recomputed(make_client, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = make_client(startup_cache="on", cache_dir=cache)
    reference = _logits(first, 0.5)
    switch = next(cache.glob("export-*/0.5.onnx"))
    switch.write_bytes(b"not onnx")
    next(cache.glob("profile-*.json")).write_text("{")
    next(cache.glob("costs-*.json")).write_text('{"0.25": 1}')
    caplog.set_level(logging.WARNING, "widthwise")
    second = make_client(startup_cache="on", cache_dir=cache)
    np.testing.assert_allclose(_logits(second, 0.5), reference, rtol=1e-5, atol=1e-6)
    assert "cached export of width 0.5 is corrupt" in caplog.text
    assert switch.read_bytes()[:8] != b"not onnx"  # repaired for the next start
    assert "profile-" in caplog.text and "is corrupt; recomputing it" in caplog.text  # the profile
    assert "cached MACs/params" in caplog.text and "are invalid" in caplog.text
    assert second.engine.profile.as_dict()["widths"].keys() == first.engine.profile.as_dict()["widths"].keys()


def test_an_unwritable_cache_directory_costs_only_the_speed_up(make_client, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    caplog.set_level(logging.WARNING, "widthwise")
    client = make_client(startup_cache="on", cache_dir=blocker / "cache")
    assert client.get("/readyz").status_code == 200
    assert caplog.text.count("is not writable") == 1


def test_the_cache_can_be_turned_off(make_client, tmp_path):
    client = make_client(startup_cache="off", cache_dir=tmp_path / "cache")
    assert client.engine.cache is None and not (tmp_path / "cache").exists()


WARM_START = """
import json, sys
import numpy as np
from fastapi.testclient import TestClient
from server.app import build_app
from server.settings import Settings
settings = Settings(checkpoint=sys.argv[1], model_name="tiny", startup_cache=True, cache_dir=sys.argv[2],
profile_repeats=3)
with TestClient(build_app(settings)) as client:
    client.app.state.engine.wait_ready(120)
    x = np.zeros((1, 3, 16, 16), np.float32)
    r = client.post("/v2/models/tiny/infer", json={"inputs": [{"name": "input", "shape": [1, 3, 16, 16],
                                                              "datatype": "FP32", "data": x.ravel().tolist()}]})
    print(json.dumps({"status": r.status_code, "logits": r.json()["outputs"][0]["data"],
                      "torch": "torch" in sys.modules, "onnx": "onnx" in sys.modules}))
"""


@pytest.mark.slow
def test_a_warm_start_serves_without_importing_torch_or_onnx(tmp_path, tiny_checkpoint):
    """Importing torch was ~1 s of a 2.8 s warm restart of S-MobileNet v2 224 (BENCHMARKS.md, "Start-up and the
    start-up cache")."""
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", WARM_START, str(tiny_checkpoint), str(tmp_path / "cache")],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["status"] == warm["status"] == 200
    assert cold["torch"] and cold["onnx"]  # the cold start built the net and exported it
    assert not warm["torch"] and not warm["onnx"]
    np.testing.assert_allclose(warm["logits"], cold["logits"], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_a_changed_checkpoint_file_is_loaded_again(make_client, tmp_path, tiny_checkpoint):
    cache = tmp_path / "cache"
    path = tmp_path / "model.safetensors"
    path.write_bytes(tiny_checkpoint.read_bytes())
    make_client(startup_cache="on", cache_dir=cache, checkpoint=path)
    assert isinstance(make_client(startup_cache="on", cache_dir=cache, checkpoint=path).engine.net, CachedNet)
    models.save_checkpoint(make_net("s_convnet6", seed=7), path)
    third = make_client(startup_cache="on", cache_dir=cache, checkpoint=path)
    assert not isinstance(third.engine.net, CachedNet)  # new bytes, new key: the weights were read
    assert third.get("/v1/models").json()["models"][0]["labels"] is None  # and the new metadata served
