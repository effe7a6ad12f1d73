"""The model card: one typed description of a checkpoint, one width matcher, one preprocessing path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import models
from models.card import ModelCard
from models.transforms import image_to_tensor, normalize_pixels
from tests.helpers import make_net


def test_card_from_metadata_and_defaults():
    net = make_net("s_convnet6")
    card = ModelCard.from_metadata(net, {
        **net.config(), "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5], "labels": [f"c{i}" for i in range(10)],
        "accuracy": {"0.25": 0.8, "1.0": 0.9}, "accuracy_source": "evaluate", "dataset": "digits"})
    assert card.widths == (0.25, 0.5, 0.75, 1.0) and card.num_classes == 10
    assert card.input.size == 16 and card.input.mean == (0.1, 0.2, 0.3)
    assert card.label(3) == "c3" and card.label(99) == "99"
    assert card.accuracy == {0.25: 0.8, 1.0: 0.9} and not card.accuracy_known
    assert card.accuracy_source == "evaluate" and card.extra == {"dataset": "digits"}
    assert ModelCard.from_metadata(net, card.metadata()) == card  # written and read back the same
    bare = ModelCard.for_net(net)
    assert bare.input.mean == (0.5, 0.5, 0.5) and bare.labels is None and bare.accuracy_source is None
    assert bare.with_labels([str(i) for i in range(10)]).label(4) == "4"
    with pytest.raises(ValueError, match="3 labels for 10 classes"):
        bare.with_labels(["a", "b", "c"])


def test_a_card_at_fewer_widths_keeps_their_accuracy_only():
    net = make_net("s_convnet6")
    card = ModelCard.for_net(net, accuracy={0.25: 0.8, 0.5: 0.85, 1.0: 0.9}, accuracy_source="evaluate")
    two = card.at_widths((0.5, 1.0))
    assert two.widths == (0.5, 1.0) and two.accuracy == {0.5: 0.85, 1.0: 0.9} and two.accuracy_known
    assert card.at_widths((0.75,)).accuracy_source is None  # nothing known of it


def test_one_width_matcher_everywhere():
    from policies import make_policy
    from server.api.codecs import parse_width

    card = ModelCard.for_net(models.create("s_mobilenet_v2", input_size=64))
    assert card.match_width(0.35000000000001) == 0.35 and card.match_width(0.4) is None
    assert parse_width("0.35", card.widths) == 0.35
    assert make_policy("fixed:0.35", card.widths).width == 0.35
    assert models.create("s_mobilenet_v2", input_size=64).width_index(0.7500000000001) == 2


def test_uint8_tensor_normalises_exactly_like_an_image():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    image = Image.fromarray(pixels[0].transpose(1, 2, 0))
    assert torch.equal(torch.from_numpy(normalize_pixels(pixels, mean, std))[0], image_to_tensor(image, 16, mean, std))
