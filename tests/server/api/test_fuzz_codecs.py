"""Property-based fuzzing of the codecs and header parsing: bad input is an ApiError 4xx, never anything else."""

import io
import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from server.api.codecs import (
    decode_image,
    decode_v2_tensor,
    parse_budget_ms,
    parse_top_k,
    parse_width,
    split_binary_body,
)
from server.api.v2_request import parse_v2_request
from server.http.errors import ApiError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WIDTHS = (0.25, 0.5, 0.75, 1.0)


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def _is_client_error(exc: ApiError) -> bool:
    return 400 <= exc.status < 500 and bool(exc.message)


@FUZZ
@given(
    data=st.binary(max_size=2048),
    media=st.sampled_from(["image/png", "image/jpeg", "image/webp", "image/gif", "text/plain", ""]),
)
def test_decode_image_of_random_bytes(data, media):
    try:
        tensor = decode_image(data, media, 1_000_000, 16, (0.5,) * 3, (0.5,) * 3, 3)
    except ApiError as exc:
        assert _is_client_error(exc)
    else:
        assert tensor.shape == (1, 3, 16, 16) and bool(np.isfinite(tensor.numpy()).all())


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=200),
    flip=st.integers(min_value=0, max_value=10_000),
    value=st.integers(0, 255),
)
def test_decode_image_of_mutated_png(cut, flip, value):
    data = bytearray(_png(40, 30))
    data[flip % len(data)] = value
    data = bytes(data[: len(data) - cut])
    try:
        tensor = decode_image(data, "image/png", 1_000_000, 16, (0.5,) * 3, (0.5,) * 3, 3)
    except ApiError as exc:
        assert _is_client_error(exc)
    else:
        assert tensor.shape == (1, 3, 16, 16)


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=30), st.floats(allow_nan=True, allow_infinity=True), st.integers()))
def test_parse_budget(value):
    try:
        budget = parse_budget_ms(value)
    except ApiError as exc:
        assert _is_client_error(exc)
    else:
        assert budget is None or (math.isfinite(budget) and budget > 0)


@FUZZ
@given(
    st.one_of(
        st.none(), st.text(max_size=20), st.floats(allow_nan=True), st.sampled_from(["0.5", "1", "1.0", " 0.25 "])
    )
)
def test_parse_width(value):
    try:
        width = parse_width(value, WIDTHS)
    except ApiError as exc:
        assert _is_client_error(exc)
    else:
        assert width is None or width in WIDTHS


@FUZZ
@given(st.one_of(st.text(max_size=10), st.integers(-10, 10**6)))
def test_parse_top_k(value):
    try:
        k = parse_top_k(value, 10)
    except ApiError as exc:
        assert _is_client_error(exc)
    else:
        assert 1 <= k <= 10


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
tensor_specs = st.fixed_dictionaries(
    {"name": st.text(max_size=5), "datatype": st.sampled_from(["FP32", "FP16", "UINT8", "BYTES", "INT64", 3]),
     "shape": st.one_of(st.lists(st.integers(-2, 20), max_size=5), json_values)},
    optional={"data": st.one_of(st.lists(st.floats(allow_nan=False, width=32), max_size=64), json_values),
              "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.integers(-4, 5000)}), json_values)},
)


@FUZZ
@given(spec=st.one_of(tensor_specs, json_values), tail=st.binary(max_size=4096))
def test_decode_v2_tensor(spec, tail):
    try:  # as the handler does: validate the whole request, then decode its input
        array, offset = decode_v2_tensor(parse_v2_request({"inputs": [spec]}).inputs[0], tail, 0, (1, 2, 2))
    except ApiError as exc:
        assert _is_client_error(exc)
    else:
        assert array.ndim == 4 and array.shape[1:] == (1, 2, 2) and 0 <= offset <= len(tail)


@FUZZ
@given(body=st.binary(max_size=512), length=st.one_of(st.none(), st.text(max_size=6), st.integers(-10, 600).map(str)))
def test_split_binary_body(body, length):
    try:
        header, tail = split_binary_body(body, length)
    except ApiError as exc:
        assert _is_client_error(exc)
    else:
        assert isinstance(header, dict) and len(tail) <= len(body)


def test_split_binary_body_round_trip():
    head = json.dumps({"inputs": []}).encode()
    header, tail = split_binary_body(head + b"\x00\x01", str(len(head)))
    assert header == {"inputs": []} and tail == b"\x00\x01"
