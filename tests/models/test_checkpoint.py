import json
import os
import pickle

import pytest
import torch

import models
from models.checkpoint import CheckpointError
from server.cli import main
from tests.helpers import OFFICIAL_ARCHS, make_net


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
def test_official_checkpoint_loads_strictly_and_arch_is_inferred(
    tmp_path, reference_layout, arch, wrapped, with_num_batches
):
    state = official_state_dict(reference_layout, arch, with_num_batches)
    path = tmp_path / "official.pt"
    torch.save({"model": state} if wrapped else state, path)
    checkpoint = models.load_checkpoint(path)
    net = checkpoint.net
    assert net.arch == arch
    assert net.widths == tuple(reference_layout[arch]["width_mult_list"])
    loaded = net.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key.removeprefix("module.")], value), key
    # Honest metadata: the weights could be anyone's, so no accuracy is assumed; ImageNet class names are known.
    assert not checkpoint.card.accuracy and checkpoint.card.source == "official"
    assert len(checkpoint.card.labels) == 1000 and checkpoint.card.labels[:2] == ("tench", "goldfish")


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
    card = models.ModelCard.for_net(net, labels=list("abcdefghij"), accuracy={0.35: 0.9, 1.0: 0.99},
                                    extra={"dataset": "digits"})
    path = tmp_path / "net.safetensors"
    models.save_checkpoint(net, path, card)
    checkpoint = models.load_checkpoint(path)
    loaded = checkpoint.net
    assert loaded.config() == net.config()
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert checkpoint.card == card  # labels, accuracy and what else the checkpoint carries
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(net(x, width=0.5), loaded(x, width=0.5))


@pytest.mark.parametrize(
    "patch,message",
    [({"widths": [1.0, 0.5]}, "ascending"), ({"widths": []}, "widths"), ({"arch": "nope"}, "unknown arch"),
     ({"num_classes": "10"}, "num_classes: Input should be a valid integer"),
     ({"num_classes": -1}, "num_classes: Input should be greater than or equal to 1"),
     ({"widths": [float("nan")]}, "widths.0: Input should be a finite number"),
     ({"widths": [0.5, 100]}, r"widths: Value error, every width must be in \(0, 4\]|widths: every width must be in"),
     ({"input_size": 100000}, "input_size: Input should be less than or equal to 4096"),
     ({"input_size": 0}, "input_size: Input should be greater than or equal to 8"),
     ({"mean": "abc"}, "mean: Input should be a valid list"),
     ({"std": [0, 0, 0]}, "std: .*every std must be positive"),
     ({"labels": 7}, "labels: Input should be a valid list"),
     ({"labels": ["a"]}, "1 labels for 10 classes"),
     ({"bn_mode": "magic"}, "bn_mode: Input should be 'switchable', 'shared' or 'universal'"),
     ({"bn_mode": "universal"}, "width_range goes with bn_mode 'universal'"),
     ({"width_range": [0.25, 1.0]}, "width_range goes with bn_mode 'universal'"),
     ({"accuracy": {"0.3": 0.5}}, "accuracy names width '0.3', which is not declared"),
     ({"accuracy": {"0.5": 70}}, r"accuracy of width 0.5 must be a fraction")],
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
    assert b.card.source == "official"
    assert b.card.accuracy == {} and b.card.labels[999] == "toilet tissue"
    for (k, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(x, y), k


@pytest.mark.slow
def test_convert_accuracy_and_labels_only_when_given(tmp_path, reference_layout, capsys):
    state = official_state_dict(reference_layout, "s_mobilenet_v2")
    src = tmp_path / "official.pt"
    torch.save({"model": state}, src)
    assert main(["convert", str(src), str(tmp_path / "paper.safetensors"), "--accuracy", "official"]) == 0
    paper = models.load_checkpoint(tmp_path / "paper.safetensors").card
    assert paper.accuracy == {0.35: 0.597, 0.5: 0.644, 0.75: 0.689, 1.0: 0.705}
    assert paper.accuracy_source == "official ImageNet top-1 (paper; US-Nets: official model zoo)"
    assert main(["convert", str(src), str(tmp_path / "mine.safetensors"), "--accuracy", "0.35=0.5,1.0=0.61"]) == 0
    assert models.load_checkpoint(tmp_path / "mine.safetensors").card.accuracy == {0.35: 0.5, 1.0: 0.61}
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(1000)))
    assert main(["convert", str(src), str(tmp_path / "named.safetensors"), "--labels", str(labels)]) == 0
    assert models.load_checkpoint(tmp_path / "named.safetensors").card.labels[3] == "thing 3"
    capsys.readouterr()
    labels.write_text("a\nb\nc\n")
    assert main(["convert", str(src), str(tmp_path / "bad.safetensors"), "--labels", str(labels)]) == 2
    assert "has 3 labels but the model has 1000 classes" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "bad.safetensors"), "--accuracy", "0.6=0.5"]) == 2
    assert "does not declare" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()


def test_convert_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.pt"), str(tmp_path / "out.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_profile_cli_json(capsys):
    assert main(["profile", "--arch", "s_convnet6", "--json", "--repeats", "3", "--max-batch-size", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["width"] for r in report["widths"]] == [0.25, 0.5, 0.75, 1.0]
    for row in report["widths"]:
        assert set(row) == {"width", "macs", "params", "latency_ms"}
        assert set(row["latency_ms"]) == {"1", "2"} and all(v > 0 for v in row["latency_ms"].values())
    macs = [r["macs"] for r in report["widths"]]
    assert macs == sorted(macs) and macs[0] < macs[-1] / 4
    assert report["fingerprint"]["arch"] == "s_convnet6" and report["fingerprint"]["device"] == "cpu"


def test_profile_cli_prints_what_it_saves(tmp_path, capsys):
    path = tmp_path / "profile.json"
    assert main(["profile", "--arch", "s_convnet6", "--repeats", "3", "--max-batch-size", "2",
                 "--save-profile", str(path)]) == 0
    out = capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert saved["fingerprint"]["backend"] in out.splitlines()[0]
    for line, (width, row) in zip(out.splitlines()[2:], saved["widths"].items()):
        cells = line.split()
        assert float(cells[0]) == float(width)
        assert [float(c) for c in cells[3:5]] == [round(row[b] * 1e3, 3) for b in ("1", "2")]


@pytest.mark.slow
def test_profile_cli_table(capsys, tmp_path):
    saved = tmp_path / "out" / "profile.json"  # a folder that does not exist yet, as out/ on a fresh clone
    assert main(["profile", "--arch", "s_mobilenet_v2", "--input-size", "224", "--repeats", "3",
                 "--save-profile", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "300,774,272" in out and "59,285,808" in out
    assert set(json.loads(saved.read_text())["widths"]) == {"0.35", "0.5", "0.75", "1.0"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int8, torch.bool])
def test_tensor_of_the_wrong_dtype_is_refused(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    net = models.create("s_convnet6")
    path = tmp_path / "net.safetensors"
    models.save_checkpoint(net, path)
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("weight"))
    tensors[key] = tensors[key].to(dtype)
    from safetensors import safe_open

    meta = safe_open(str(path), "pt").metadata()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(
        CheckpointError, match=f"key '{key}' is {str(dtype).removeprefix('torch.')}, the model needs float32"
    ):
        models.load_checkpoint(path)


def test_non_finite_weights_are_refused(tmp_path):
    net = models.create("s_convnet6")
    with torch.no_grad():
        next(net.parameters())[0].fill_(float("nan"))
    path = tmp_path / "nan.safetensors"
    models.save_checkpoint(net, path)
    with pytest.raises(CheckpointError, match="holds NaN or infinite values"):
        models.load_checkpoint(path)


def test_path_that_is_not_a_file_says_what_it_is(tmp_path):
    import os

    with pytest.raises(CheckpointError, match="is a directory"):
        models.load_checkpoint(tmp_path)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        models.load_checkpoint(fifo)


@pytest.mark.live
def test_bad_checkpoint_metadata_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    from tests.helpers import REPO

    net = models.create("s_convnet6")
    path = tmp_path / "net.safetensors"
    models.save_checkpoint(net, path)
    save_file(load_file(str(path)), str(path), metadata={"widthwise": json.dumps({**net.config(), "std": [0, 0, 0]})})
    out = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--checkpoint", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"widthwise serve: error: {path}: invalid metadata: std: every std "
                                               "must be positive, got [0.0, 0.0, 0.0]"]
