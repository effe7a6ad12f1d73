import json
import os
import pickle

import pytest
import torch

import models
from models.checkpoint import CheckpointError
from server.cli import main
from tests.conftest import OFFICIAL_ARCHS, make_net


def official_state_dict(layout: dict, arch: str, with_num_batches: bool = True, seed: int = 0) -> dict:
    """An official-style state dict built from the reference layout: random values, ``module.`` prefix."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in layout[arch]["state_dict"]:
        if key.endswith("num_batches_tracked"):
            if with_num_batches:
                state[key] = torch.tensor(7, dtype=torch.int64)
            continue
        value = torch.rand(shape, generator=generator)
        state[key] = value + 0.5 if key.endswith("running_var") else value
    return state


@pytest.mark.parametrize("arch", OFFICIAL_ARCHS)
@pytest.mark.parametrize("wrapped,with_num_batches", [(False, True), (True, False)])
def test_official_checkpoint_loads_strictly_and_arch_is_inferred(tmp_path, reference_layout, arch, wrapped, with_num_batches):
    state = official_state_dict(reference_layout, arch, with_num_batches)
    path = tmp_path / "official.pt"
    torch.save({"model": state} if wrapped else state, path)
    net = models.load_checkpoint(path)
    assert net.arch == arch
    assert net.widths == tuple(reference_layout[arch]["width_mult_list"])
    loaded = net.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key.removeprefix("module.")], value), key
    assert net.metadata["accuracy"][1.0] == models.checkpoint.OFFICIAL_TOP1[arch][1.0]


def test_official_checkpoint_with_wrong_shape_names_the_key(tmp_path, reference_layout):
    state = official_state_dict(reference_layout, "s_mobilenet_v2")
    key = "module.features.3.body.0.weight"
    state[key] = torch.zeros(7, 7, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="features.3.body.0.weight"):
        models.load_checkpoint(tmp_path / "bad.pt", arch="s_mobilenet_v2")
    with pytest.raises(CheckpointError, match="matches no registered architecture"):
        models.load_checkpoint(tmp_path / "bad.pt")


def test_official_checkpoint_with_missing_key_names_the_key(tmp_path, reference_layout):
    state = official_state_dict(reference_layout, "s_mobilenet_v1")
    del state["module.features.5.body.1.bn.2.running_var"]
    torch.save({"model": state}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing key 'features.5.body.1.bn.2.running_var'"):
        models.load_checkpoint(tmp_path / "missing.pt", arch="s_mobilenet_v1")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/widthwise-pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    if os.path.exists("/tmp/widthwise-pwned"):
        os.remove("/tmp/widthwise-pwned")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        models.load_checkpoint(path)
    assert not os.path.exists("/tmp/widthwise-pwned")


def test_safetensors_round_trip_is_bit_exact(tmp_path):
    net = make_net("s_mobilenet_v2_cifar")
    meta = {"mean": [0.5] * 3, "std": [0.5] * 3, "labels": list("abcdefghij"), "accuracy": {0.35: 0.9, 1.0: 0.99}}
    path = tmp_path / "net.safetensors"
    models.save_checkpoint(net, path, meta)
    loaded = models.load_checkpoint(path)
    assert loaded.config() == net.config()
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.metadata["labels"] == list("abcdefghij")
    assert loaded.metadata["accuracy"] == {0.35: 0.9, 1.0: 0.99}
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(net(x, width=0.5), loaded(x, width=0.5))


@pytest.mark.parametrize(
    "patch,message",
    [({"widths": [1.0, 0.5]}, "ascending"), ({"widths": []}, "widths"), ({"arch": "nope"}, "unknown arch")],
)
def test_invalid_metadata_is_refused(tmp_path, patch, message):
    from safetensors.torch import load_file, save_file

    net = models.create("s_convnet6")
    path = tmp_path / "net.safetensors"
    models.save_checkpoint(net, path)
    meta = {**net.config(), **patch}
    save_file(load_file(str(path)), str(path), metadata={"widthwise": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=message):
        models.load_checkpoint(path)


def test_corrupt_or_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        models.load_checkpoint(tmp_path / "absent.safetensors")
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(CheckpointError):
        models.load_checkpoint(bad)


def test_convert_cli_writes_equivalent_safetensors(tmp_path, reference_layout, capsys):
    state = official_state_dict(reference_layout, "s_mobilenet_v2")
    src, dst = tmp_path / "official.pt", tmp_path / "ours.safetensors"
    torch.save({"model": state}, src)
    assert main(["convert", str(src), str(dst)]) == 0
    assert "s_mobilenet_v2" in capsys.readouterr().out
    a, b = models.load_checkpoint(src), models.load_checkpoint(dst)
    assert b.metadata["source"] == "official"
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_convert_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.pt"), str(tmp_path / "out.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_profile_cli_json(capsys):
    assert main(["profile", "--arch", "s_convnet6", "--json", "--repeats", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["width"] for r in report["widths"]] == [0.25, 0.5, 0.75, 1.0]
    for row in report["widths"]:
        assert set(row) == {"width", "macs", "params", "latency_ms"}
        assert row["latency_ms"] > 0
    macs = [r["macs"] for r in report["widths"]]
    assert macs == sorted(macs) and macs[0] < macs[-1] / 4


def test_profile_cli_table(capsys):
    assert main(["profile", "--arch", "s_mobilenet_v2", "--input-size", "224", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "300,774,272" in out and "59,285,808" in out
