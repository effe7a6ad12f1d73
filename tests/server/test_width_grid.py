"""Serving a width grid: --widths as a list or lo:hi:step, calibrated widths only, every width
exported, profiled (monotone) and chosen by the policies."""

from __future__ import annotations

import httpx2
import pytest
import torch

import models
from models.rebuild import select_widths
from models.widths import parse_widths, width_grid
from server.cli import main
from server.settings import Settings
from tests.helpers import make_net, png_bytes

GRID = width_grid(0.25, 1.0, 0.05)  # 16 widths


@pytest.fixture(scope="module")
def us_checkpoint(tmp_path_factory):
    """A universally slimmable net (random weights) with calibrated statistics on a 0.05 grid."""
    path = tmp_path_factory.mktemp("grid") / "us.safetensors"
    net = make_net("us_convnet6", seed=2, widths=GRID)
    card = models.ModelCard.for_net(net, labels=[f"class{i}" for i in range(10)],
                                    accuracy={w: 0.5 + 0.4 * w for w in GRID})
    models.save_checkpoint(net, path, card)
    return path


def test_widths_parse_lists_and_grids_and_refuse_nonsense():
    assert parse_widths("0.35:1.0:0.05") == width_grid(0.35, 1.0, 0.05) and len(width_grid(0.35, 1.0, 0.05)) == 14
    assert parse_widths("0.25,0.5,1") == (0.25, 0.5, 1.0)
    for bad, message in (("0.5,0.25", "ascending"), ("0.35:1.0:0.3", "does not end"), ("a:b:c", "list or lo:hi:step"),
                         ("0:1:0.1", "0 < low"), ("0.1:1:0.001", "at most 256"), ("0.5:1", "lo:hi:step")):
        with pytest.raises(ValueError, match=message):
            parse_widths(bad)
    with pytest.raises(ValueError, match="widths"):
        Settings(widths="1,0.5")
    assert Settings(widths="0.25:1.0:0.25").served_widths() == (0.25, 0.5, 0.75, 1.0)


def test_select_widths_keeps_each_switch_and_refuses_what_is_not_there(us_checkpoint):
    checkpoint = models.load_checkpoint(us_checkpoint)
    net = checkpoint.net
    assert select_widths(net, None).widths == GRID
    sub = select_widths(net, (0.3, 0.65, 1.0))
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        for w in sub.widths:
            assert torch.equal(sub(x, w), net(x, w))
    assert set(checkpoint.select((0.3, 0.65, 1.0)).card.accuracy) == {0.3, 0.65, 1.0}
    with pytest.raises(ValueError, match="0.62 not calibrated"):
        select_widths(net, (0.5, 0.62))
    slim = make_net("s_convnet6")
    assert select_widths(slim, (0.5, 1.0)).widths == (0.5, 1.0)
    with pytest.raises(ValueError, match="0.6 not declared"):
        select_widths(slim, (0.6,))
    uncalibrated = models.create("us_convnet6")
    with pytest.raises(ValueError, match="no width has calibrated"):
        select_widths(uncalibrated, None)


def test_serve_refuses_an_uncalibrated_width_at_start(us_checkpoint, capsys):
    assert main(["serve", "--checkpoint", str(us_checkpoint), "--widths", "0.25,0.62", "--port", "0"]) == 2
    assert "0.62 not calibrated" in capsys.readouterr().err


@pytest.mark.live
def test_live_server_serves_the_whole_grid(live_server, us_checkpoint):
    server = live_server("--checkpoint", str(us_checkpoint), "--widths", "0.25:1.0:0.05", "--model-name", "grid")
    described = httpx2.get(server.url + "/v1/models").json()["models"][0]
    widths = [w["width"] for w in described["widths"]]
    assert widths == list(GRID)
    for batch in ("1", "2", "4", "8"):
        latency = [w["latency_ms"][batch] for w in described["widths"]]
        assert latency == sorted(latency), batch  # monotone over the grid
    headers = {"content-type": "image/png"}
    served = set()
    for width in (0.3, 0.65, 0.95):  # any grid width can be pinned ...
        r = httpx2.post(
            server.url + "/v1/classify", content=png_bytes(size=(16, 16)), headers={**headers, "X-Width": str(width)}
        )
        assert r.status_code == 200 and r.json()["width"] == width
        served.add(r.headers["x-served-width"])
    assert served == {"0.3", "0.65", "0.95"}
    r = httpx2.post(
        server.url + "/v1/classify", content=png_bytes(size=(16, 16)), headers={**headers, "X-Width": "0.62"}
    )
    assert r.status_code == 422  # ... a width off the grid cannot
    r = httpx2.post(server.url + "/v1/classify", content=png_bytes(size=(16, 16)),
                    headers={**headers, "X-Latency-Budget-Ms": "1000"})
    assert r.status_code == 200 and r.json()["width"] == 1.0 and r.json()["reason"] == "budget"
    metrics = httpx2.get(server.url + "/metrics").text
    assert 'widthwise_width_info{model="grid",position="intermediate",width="0.65"} 1.0' in metrics
