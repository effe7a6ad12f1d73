import json

import numpy as np
import pytest
import torch
from PIL import Image

import models
from models.training import TrainConfig, calibrate_bn, evaluate, load_dataset, train
from models.training.data import digits_images
from server.cli import main

DEFAULT_CHECKPOINT = models.checkpoint.DEFAULT_CHECKPOINT


@pytest.fixture(scope="module")
def digits8():
    """scikit-learn's digits at their own 8x8: what these tests show holds at 8x8 on a quarter of the
    arithmetic of 16x16 (the arch's default size)."""
    return load_dataset("digits", 8)


def small_convnet(**kwargs) -> models.SlimmableNet:
    return models.create("s_convnet6", input_size=8, **kwargs)


def test_digits_split_is_fixed_and_held_out(digits8):
    again = load_dataset("digits", 16)
    assert torch.equal(digits8.y_val, again.y_val)
    assert len(digits8.y_train) + len(digits8.y_val) == 1797
    assert again.x_train.shape[1:] == (3, 16, 16) and digits8.x_train.shape[1:] == (3, 8, 8)
    assert torch.equal(load_dataset("digits", 8).x_val, digits8.x_val)
    assert digits8.labels == tuple("0123456789")


@pytest.mark.slow
def test_short_run_lowers_loss_and_cli_writes_metadata(tmp_path, capsys):
    out = tmp_path / "c6.safetensors"
    argv = ["train", "--arch", "s_convnet6", "--input-size", "8", "--epochs", "2", "--out", str(out), "--no-progress",
            "--lr", "0.05"]
    assert main(argv) == 0
    card = models.load_checkpoint(out).card
    assert card.extra["dataset"] == "digits" and card.labels == tuple("0123456789")
    assert set(card.accuracy) == {0.25, 0.5, 0.75, 1.0}
    assert all(0.0 <= a <= 1.0 for a in card.accuracy.values())
    assert card.extra["training"]["epochs"] == 2

    net = small_convnet()
    result = train(net, load_dataset("digits", 8), TrainConfig(epochs=3, lr=0.05, progress=False))
    assert result.losses[-1] < result.losses[0] * 0.7


@pytest.mark.slow
def test_same_seed_gives_the_same_checkpoint(tmp_path, capsys):
    def run(name: str, seed: int) -> dict:
        out = tmp_path / name
        assert (
            main(
                [
                    "train",
                    "--arch",
                    "s_convnet6",
                    "--input-size",
                    "8",
                    "--epochs",
                    "1",
                    "--seed",
                    str(seed),
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        return models.load_checkpoint(out).net.state_dict()

    a, b, c = run("a.safetensors", 3), run("b.safetensors", 3), run("c.safetensors", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_inplace_distillation_trains_every_width(digits8):
    net = small_convnet()
    result = train(net, digits8, TrainConfig(epochs=4, inplace_distill=True, progress=False))
    assert min(result.val_top1.values()) > 0.8


@pytest.mark.slow
def test_switchable_bn_fixes_the_shared_bn_collapse(digits8):
    """The paper's Figure 2 in miniature: shared BN breaks the narrow widths, S-BN does not."""
    accuracy = {}
    for mode in ("shared", "switchable"):
        net = small_convnet(bn_mode=mode)
        accuracy[mode] = train(net, digits8, TrainConfig(epochs=4, lr=0.1, seed=0, progress=False)).val_top1
    assert accuracy["shared"][0.25] < 0.50, accuracy
    assert min(accuracy["switchable"].values()) >= 0.95, accuracy


@pytest.mark.slow
def test_calibrate_restores_corrupted_statistics(tmp_path, digits8, capsys):
    net = small_convnet()
    train(net, digits8, TrainConfig(epochs=4, progress=False))
    before = evaluate(net, digits8.x_val, digits8.y_val)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(0.01)
    broken = evaluate(net, digits8.x_val, digits8.y_val)
    assert max(r["top1"] for r in broken.values()) < 0.5
    ckpt, fixed_ckpt = tmp_path / "broken.safetensors", tmp_path / "fixed.safetensors"
    models.save_checkpoint(net, ckpt, models.ModelCard.for_net(net, mean=digits8.mean, std=digits8.std))
    # saved without its data set (trained here, not by `widthwise train`): the data set is explicit
    assert main(["calibrate", "--checkpoint", str(ckpt), "--dataset", "digits", "--batches", "10",
                 "--out", str(fixed_ckpt)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(fixed_ckpt), "--dataset", "digits", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for row in report["widths"]:
        assert row["top1"] >= before[row["width"]]["top1"] - 0.03
        assert 0.9 <= row["top5"] <= 1.0
    assert models.load_checkpoint(fixed_ckpt).card.accuracy[0.25] == report["widths"][0]["top1"]


@pytest.mark.slow
def test_evaluate_and_calibrate_measure_on_the_data_set_the_card_names(tmp_path, capsys):
    torch.manual_seed(0)
    net = models.create("s_convnet6")
    hard = load_dataset("digits-hard", 16)
    ckpt = tmp_path / "hard.safetensors"
    models.save_checkpoint(net, ckpt, models.ModelCard.for_net(net, mean=hard.mean, std=hard.std,
                                                               extra={"dataset": "digits-hard"}))
    # default: the card's data set, said so in the accuracy's source
    assert main(["evaluate", "--checkpoint", str(ckpt), "--json", "--out", str(tmp_path / "e.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "digits-hard"
    card = models.load_checkpoint(tmp_path / "e.safetensors").card
    assert card.accuracy_source == "widthwise evaluate on digits-hard, held-out split"
    calibrated = tmp_path / "c.safetensors"
    assert main(["calibrate", "--checkpoint", str(ckpt), "--batches", "2", "--out", str(calibrated)]) == 0
    assert "digits-hard, held-out" in models.load_checkpoint(calibrated).card.accuracy_source
    capsys.readouterr()
    # another data set is explicit, noted on stderr and recorded in the source
    for command, extra in (("evaluate", []), ("calibrate", ["--batches", "2"])):
        out = tmp_path / f"{command}-other.safetensors"
        assert main([command, "--checkpoint", str(ckpt), "--dataset", "digits", "--out", str(out), *extra]) == 0
        assert "not on digits-hard" in capsys.readouterr().err
        source = models.load_checkpoint(out).card.accuracy_source
        assert source.startswith(f"widthwise {command} on digits (not digits-hard, the training data set)"), source


def test_a_checkpoint_that_names_no_data_set_needs_an_explicit_one(tmp_path, capsys):
    net = models.create("s_convnet6")
    ckpt = tmp_path / "anon.safetensors"
    models.save_checkpoint(net, ckpt, models.ModelCard.for_net(net))
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not say which data set it was trained on; pass --dataset" in err[0]


def test_torch_commands_run_on_the_threads_asked_for(tmp_path, capsys):
    net = models.create("s_convnet6")
    ckpt = tmp_path / "c.safetensors"
    models.save_checkpoint(net, ckpt, models.ModelCard.for_net(net, extra={"dataset": "digits"}))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["evaluate", "--checkpoint", str(ckpt), "--json"]) == 0
        assert torch.get_num_threads() == 1  # the default: one thread
        assert main(["evaluate", "--checkpoint", str(ckpt), "--json", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_calibrate_refuses_shared_bn(digits8):
    with pytest.raises(ValueError, match="switchable"):
        calibrate_bn(small_convnet(bn_mode="shared"), digits8.x_train, 2)


def test_image_folder_dataset(tmp_path):
    images, targets = digits_images()
    for split in ("train", "val"):
        for i in range(40 if split == "train" else 10):
            folder = tmp_path / split / f"class_{targets[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            images[i].save(folder / f"{i}.png")
    (tmp_path / "train" / "class_0" / "notes.txt").write_text("not an image")
    data = load_dataset(str(tmp_path), 16)
    classes = sorted({f"class_{t}" for t in targets[:40]})
    assert data.labels == tuple(classes)
    assert len(data.y_train) == 40 and len(data.y_val) == 10
    first = np.asarray(images[0].convert("RGB").resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255
    label_of_first = classes.index(f"class_{targets[0]}")
    idx = int((data.y_train == label_of_first).nonzero()[0])
    torch.testing.assert_close(data.x_train[idx], torch.from_numpy((first - 0.5) / 0.5).permute(2, 0, 1))


def test_image_folder_without_split_holds_out_a_fixed_fraction(tmp_path):
    images, targets = digits_images()
    for i in range(50):
        folder = tmp_path / str(targets[i])
        folder.mkdir(exist_ok=True)
        images[i].save(folder / f"{i}.png")
    data = load_dataset(str(tmp_path), 8)
    assert len(data.y_val) == 10 and len(data.y_train) == 40


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither 'digits', 'digits-hard' nor a directory"):
        load_dataset(str(tmp_path / "nope"), 16)


@pytest.mark.slow
def test_shipped_default_model_shows_the_width_accuracy_trade_off():
    # The embedded demo exists to show what serving narrower costs: held-out accuracy on digits-hard
    # rises with width, and the stored accuracy is exactly what evaluation measures.
    checkpoint = models.load_checkpoint(DEFAULT_CHECKPOINT)
    net, spec = checkpoint.net, checkpoint.card.input
    assert DEFAULT_CHECKPOINT.stat().st_size <= 10 * 1024 * 1024
    assert net.arch == "s_mobilenet_v2_cifar" and net.widths == (0.35, 0.5, 0.75, 1.0) and net.input_size == 16
    data = load_dataset("digits-hard", spec.size, spec.channels, mean=spec.mean, std=spec.std)
    measured = evaluate(net, data.x_val, data.y_val)
    stored = checkpoint.card.accuracy
    for width in net.widths:
        assert measured[width]["top1"] == pytest.approx(stored[width], abs=1e-9)
    top1 = [stored[w] for w in net.widths]
    assert top1 == sorted(top1) and top1[-1] - top1[0] >= 0.05, top1
    assert top1[0] >= 0.5  # far above chance (0.1)


@pytest.mark.slow
def test_digits_read_from_the_package_file_are_load_digits():
    from sklearn.datasets import load_digits

    from models.training.data import _digits_arrays

    images, targets = _digits_arrays()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(targets, reference.target)


def test_digits_hard_is_deterministic_and_keeps_the_split():
    from models.training.data import _digits_split

    a = load_dataset("digits-hard", 16, 3)
    _digits_split.cache_clear()  # made again, not read from the process's cache
    b = load_dataset("digits-hard", 16, 3)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    held_out = load_dataset("digits-hard", 16, 3, with_train=False)
    assert torch.equal(held_out.x_val, a.x_val) and len(held_out.x_train) == len(held_out.y_train) == 0
    assert len(a.y_train) == 6 * 1438 and len(a.y_val) == 4 * 359
    plain = load_dataset("digits", 16, 3)
    assert torch.equal(torch.bincount(a.y_val), 4 * torch.bincount(plain.y_val))  # variants of the held-out digits


def test_readme_examples_are_classified_at_every_width():
    from pathlib import Path

    from PIL import Image

    from models.transforms import image_to_tensor

    checkpoint = models.load_checkpoint(DEFAULT_CHECKPOINT)
    net, spec = checkpoint.net, checkpoint.card.input
    examples = sorted(Path(DEFAULT_CHECKPOINT).parents[2].joinpath("examples").glob("digit_*.png"))
    assert len(examples) == 10
    for path in examples:
        x = image_to_tensor(Image.open(path), spec.size, spec.mean, spec.std)[None]
        with torch.inference_mode():
            assert {int(net(x, width=w).argmax()) for w in net.widths} == {int(path.stem[-1])}, path.name
