"""A model whose widest switch is 2.0x (S-ShuffleNet) is served like any other: nothing assumes width <= 1."""

import numpy as np
import pytest
import torch

import models
from tests.helpers import make_net


@pytest.mark.slow
def test_s_shufflenet_serves_its_2x_switch(make_client, tmp_path):
    net = make_net("s_shufflenet", num_classes=10, seed=3)
    path = tmp_path / "shufflenet.safetensors"
    models.save_checkpoint(net, path, models.ModelCard.for_net(net, accuracy={0.5: 0.573, 1.0: 0.655, 2.0: 0.713}))
    client = make_client(checkpoint=path, model_name="tiny", max_batch_size=2)
    described = client.get("/v1/models").json()["models"][0]
    assert [w["width"] for w in described["widths"]] == [0.5, 1.0, 2.0]
    assert described["widths"][2]["macs"] > described["widths"][1]["macs"] > described["widths"][0]["macs"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    loaded = models.load_checkpoint(path).net
    for width in (2.0, 0.5):
        r = client.post("/v2/models/tiny/infer", json={"inputs": [{"name": "input", "shape": [2, 3, 64, 64],
                                                                   "datatype": "FP32", "data": x.ravel().tolist()}],
                                                       "parameters": {"width": width}})
        assert r.status_code == 200, r.text
        assert r.json()["parameters"]["width"] == width and r.headers["x-served-width"] == repr(width)
        with torch.inference_mode():
            expected = loaded(torch.from_numpy(x), width=width).numpy()
        np.testing.assert_allclose(
            np.array(r.json()["outputs"][0]["data"]).reshape(2, 10), expected, rtol=1e-4, atol=1e-4
        )
    # No budget: the widest switch, 2.0, labelled as such in the metrics.
    r = client.post(
        "/v2/models/tiny/infer",
        json={
            "inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": x[:1].ravel().tolist()}]
        },
    )
    assert r.json()["parameters"]["width"] == 2.0 and r.json()["parameters"]["reason"] == "no_budget"
    sample = client.registry.get_sample_value
    assert sample("widthwise_width_info", {"model": "tiny", "width": "2.0", "position": "widest"}) == 1
    assert sample("widthwise_requests_total", {"model": "tiny", "width": "2.0", "outcome": "ok"}) == 2
