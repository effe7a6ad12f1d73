"""Start-up as an operator sees it: the first request is served, failures end the process, profiles match."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx2
import pytest
import torch

from server.testing import LiveServer, free_port
from tests.helpers import REPO, png_bytes


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``widthwise serve ARGS`` on a free port, expected to exit by itself."""
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port()), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.live
def test_first_request_of_a_fresh_server_is_served():
    server = LiveServer()  # the embedded default model, as `make serve` starts it
    try:
        server.wait_ready()
        r = httpx2.post(server.url + "/v1/classify", content=(REPO / "examples" / "digit_7.png").read_bytes(),
                        headers={"content-type": "image/png", "x-latency-budget-ms": "1000"}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] == "7"
    finally:
        server.stop()


@pytest.mark.live
def test_request_path_is_warm_before_ready():
    # In a fresh interpreter: once the server is ready, the codecs a first request needs are loaded
    # (without the warm-up, Pillow imports its plugins and python-multipart loads on the first request).
    code = """
import sys
from fastapi.testclient import TestClient
from server.app import build_app
from server.settings import Settings
app = build_app(Settings(profile_repeats=3))
with TestClient(app):
    assert app.state.engine.wait_ready(120), app.state.engine.failure
    loaded = [m for m in ("PIL.PngImagePlugin", "PIL.JpegImagePlugin", "PIL.WebPImagePlugin", "python_multipart")
              if m in sys.modules]
    print(",".join(loaded))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(",") == ["PIL.PngImagePlugin", "PIL.JpegImagePlugin", "PIL.WebPImagePlugin",
                                             "python_multipart"]


@pytest.mark.live
def test_missing_profile_exits_2_before_listening(tmp_path):
    out = serve("--profile", str(tmp_path / "missing.json"))
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert errors == [f"widthwise serve: error: --profile {tmp_path / 'missing.json'}: no such file; save one with "
                      "`widthwise serve --save-profile PATH` or leave --profile out to measure at start-up"]


@pytest.mark.live
def test_profile_that_is_a_directory_exits_2(tmp_path):
    out = serve("--profile", str(tmp_path))
    assert out.returncode == 2 and "not a regular file" in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
@pytest.mark.live
def test_device_cuda_without_cuda_exits_2():
    out = serve("--device", "cuda")
    assert out.returncode == 2
    assert "--device cuda: no CUDA device is available" in out.stderr and "use --device cpu" in out.stderr


@pytest.mark.live
def test_failed_start_up_ends_the_process_non_zero(tiny_checkpoint):
    # A failure in the start-up thread, after uvicorn listens (here an export that runs out of memory,
    # injected): the process must exit 3 with one line, not linger unready.
    code = ("import sys\n"
            "from server.cli import main\n"
            "from server.runtime import Runtime\n"
            "def fail(*args, **kwargs):\n"
            "    raise RuntimeError('export failed: out of memory (injected)')\n"
            "Runtime.from_config = classmethod(fail)\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", code, "serve", "--port", str(free_port()), "--checkpoint",
                          str(tiny_checkpoint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3
    failures = [line for line in out.stderr.splitlines() if "start-up failed" in line and "exiting" in line]
    assert len(failures) == 1 and "ERROR" in failures[0]
    assert "export failed: out of memory (injected)" in failures[0]
    assert "Traceback" not in out.stderr


def test_profile_for_another_model_is_refused_before_any_width_is_exported(make_client, synthetic_profile, tmp_path,
                                                                             caplog):
    foreign = json.loads(synthetic_profile.read_text())
    foreign["fingerprint"].update(input_size=224, threads=64)
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(foreign))
    with pytest.raises(ValueError) as err:  # `serve` prints it as one line and exits 2
        make_client(wait=False, profile=path)
    assert "input_size (profile 224, server 16)" in str(err.value) and "threads (profile 64," in str(err.value)
    assert "exporting" not in caplog.text


def test_profile_without_fingerprint_is_refused(make_client, tmp_path):
    path = tmp_path / "bare.json"
    path.write_text(
        json.dumps({"widths": {"0.25": {"1": 0.01}, "0.5": {"1": 0.02}, "0.75": {"1": 0.03}, "1.0": {"1": 0.04}}})
    )
    with pytest.raises(ValueError, match="does not say what it measured"):
        make_client(wait=False, profile=path)


@pytest.mark.slow
def test_saved_profile_loads_into_the_same_server(make_client, tmp_path):
    path = tmp_path / "measured.json"
    first = make_client(save_profile=path)
    saved = json.loads(path.read_text())
    assert saved["fingerprint"] == first.engine.runtime.fingerprint
    assert set(saved["widths"]) == {"0.25", "0.5", "0.75", "1.0"}
    assert saved["accuracy"] == {"0.25": 0.9, "0.5": 0.95, "0.75": 0.97, "1.0": 0.98}
    second = make_client(profile=path, profile_ewma_alpha=0.0)
    assert second.get("/readyz").status_code == 200
    assert second.engine.profile.as_dict()["widths"] == saved["widths"]
    r = second.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 200


def test_labels_file_names_the_predictions(make_client, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"animal {i}\n" for i in range(10)))
    client = make_client(labels=labels)
    r = client.post("/v1/classify?top_k=10", content=png_bytes(), headers={"content-type": "image/png"})
    assert sorted(p["label"] for p in r.json()["predictions"]) == sorted(f"animal {i}" for i in range(10))
    assert client.get("/v1/models").json()["models"][0]["labels"][3] == "animal 3"


@pytest.mark.live
def test_labels_file_with_the_wrong_count_exits_2(tiny_checkpoint, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    out = serve("--checkpoint", str(tiny_checkpoint), "--labels", str(labels))
    assert out.returncode == 2
    assert f"--labels {labels} has 2 labels but the model has 10 classes" in out.stderr


def test_unknown_accuracy_is_reported_as_unknown(make_client, tmp_path):
    import models
    from tests.helpers import make_net

    path = tmp_path / "no-accuracy.safetensors"
    models.save_checkpoint(make_net("s_convnet6"), path)
    client = make_client(checkpoint=path)
    model = client.get("/v1/models").json()["models"][0]
    assert model["accuracy_source"] is None and all(w["expected_accuracy"] is None for w in model["widths"])
    assert client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}).status_code == 200
    assert (
        client.registry.get_sample_value("widthwise_requests_total", {"model": "tiny", "width": "1.0", "outcome": "ok"})
        == 1
    )
    # No series at all (a 0 would read as "serving 0% accuracy").
    assert client.registry.get_sample_value("widthwise_expected_correct_total", {"model": "tiny"}) is None
    assert "widthwise_expected_correct_total{" not in client.get("/metrics").text


def test_known_accuracy_is_counted(make_client):
    client = make_client()
    client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "X-Width": "0.5"})
    assert client.registry.get_sample_value("widthwise_expected_correct_total", {"model": "tiny"}) == pytest.approx(
        0.95
    )
    assert client.get("/v1/models").json()["models"][0]["accuracy_source"] == "checkpoint metadata"
