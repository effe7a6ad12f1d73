"""Request decoding: images for ``/v1/classify``, tensors for the v2 protocol, and headers.

Every function raises :class:`ApiError` with a 4xx status on bad input.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.card import InputSpec
from models.transforms import image_to_array, normalize_pixels
from models.widths import match_width
from server.api.v2_request import V2InferRequest, V2InputTensor
from server.http.errors import ApiError

__all__ = [
    "IMAGE_MEDIA_TYPES",
    "decode_base64_image",
    "sniff_media_type",
    "MAX_ASPECT_RATIO",
    "CHEAP_DECODE_PIXELS",
    "open_image",
    "decode_opened",
    "decode_image",
    "parse_budget_ms",
    "parse_width",
    "parse_top_k",
    "V2_DATATYPES",
    "decode_v2_tensor",
    "v2_input_tensor",
    "v2_samples",
    "parse_json",
    "parse_number",
    "split_binary_body",
    "top_predictions",
]

IMAGE_MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
V2_DATATYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}


MAX_ASPECT_RATIO = 32  # wider or taller images are refused: no photo or scan needs more
CHEAP_DECODE_PIXELS = 256 * 256  # decoded on the event loop below this (~0.2 ms); larger ones in a thread


def open_image(data: bytes, media_type: str, max_pixels: int) -> Image.Image:
    """Read an image's header (no pixels yet) and check format, size and shape.

    Cheap and bounded whatever the body claims, so it runs on the event loop; the pixel work
    happens in :func:`decode_opened`, which a handler may move off the loop by ``image.size``.
    """
    fmt = IMAGE_MEDIA_TYPES.get(media_type)
    if fmt is None:
        raise ApiError(415, f"unsupported media type {media_type!r}; send one of {', '.join(IMAGE_MEDIA_TYPES)}")
    if not data:
        raise ApiError(400, "empty image body")
    # No warnings.catch_warnings() here: it swaps process-wide state and is not thread-safe.
    # Our own pixel limit (checked before decoding) is far below Pillow's bomb threshold.
    try:
        image = Image.open(io.BytesIO(data), formats=list(IMAGE_MEDIA_TYPES.values()))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, f"image rejected as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ApiError(400, f"cannot decode image: not a JPEG, PNG or WebP image (declared {media_type})") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for corrupt headers
        raise ApiError(400, f"cannot decode image: {_describe(exc)}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ApiError(400, f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ApiError(413, f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ApiError(413, f"image of {width}x{height} pixels is more than {MAX_ASPECT_RATIO} times wider "
                            "than high or higher than wide")
    return image


_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))


def sniff_media_type(data: bytes) -> str:
    """The image media type from the first bytes (JSON bodies carry no Content-Type per image);
    ``application/octet-stream`` when it is none of JPEG, PNG or WebP (then refused with 415)."""
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)


def decode_base64_image(value: Any, where: str) -> tuple[bytes, str]:
    """A base64 image from a JSON body (plain, or a ``data:image/...;base64,`` URL) and its media type
    (the URL's, else sniffed from the bytes); 400 when it is not a string of valid base64."""
    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a base64 string, got {type(value).__name__}")
    declared = None
    match = _DATA_URL.match(value)
    if match:
        declared, value = match.group(1), value[match.end():]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None
    return data, (declared or sniff_media_type(data)).lower()


def decode_opened(
    image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float], channels: int, jpeg_draft: bool = False,
) -> np.ndarray:
    """Decode an image from :func:`open_image` and preprocess it into ``[1, C, size, size]``.

    With ``jpeg_draft`` a JPEG larger than needed is decoded by libjpeg at 1/2, 1/4
    or 1/8 scale (DCT-domain downscaling, never below ``size`` on either side)
    before the usual resize: a 1080p photo decodes 2-3x faster, at the price of
    pixels that differ slightly from a full-size decode.
    """
    try:
        if jpeg_draft and image.format == "JPEG":
            image.draft("RGB" if channels == 3 else "L", (size, size))
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, f"image rejected as a decompression bomb: {exc}") from None
    except Exception as exc:  # truncated or corrupt pixel data
        raise ApiError(400, f"cannot decode image: {_describe(exc)}") from None
    return image_to_array(image, size, mean, std, channels)[None]


def decode_image(
    data: bytes,
    media_type: str,
    max_pixels: int,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int,
    jpeg_draft: bool = False,
) -> np.ndarray:
    """:func:`open_image` then :func:`decode_opened`: one image body as ``[1, C, size, size]``."""
    return decode_opened(open_image(data, media_type, max_pixels), size, mean, std, channels, jpeg_draft)


def _describe(exc: Exception) -> str:
    """An exception as a client may see it: type and message, without object reprs (heap addresses)."""
    return f"{type(exc).__name__}: {re.sub(r'<[^<>]* at 0x[0-9a-fA-F]+>', 'the image', str(exc))}"


def top_predictions(logits: np.ndarray, k: int, label: Callable[[int], str]) -> list[dict]:
    """The ``k`` most probable classes of one sample's logits as ``{index, label, score}`` (softmax
    scores, highest first; equal scores in class order)."""
    logits = np.asarray(logits, dtype=np.float32)
    exp = np.exp(logits - logits.max())
    scores = exp / exp.sum()
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"index": int(i), "label": label(int(i)), "score": float(scores[i])} for i in order]


# ASCII only: \d would also match other scripts' digits, which float() and int() accept.
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)  # no '_', inf/nan or hex
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)  # numbers, but out of range (422)
_INTEGER = re.compile(r"[+-]?\d{1,18}", re.ASCII)


def _shown(value: Any) -> str:
    """A client value quoted in an error message, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_number(value: Any, source: str, unit: str = "a number") -> float:
    """A JSON number or a plain decimal string as float; 400 for anything else (bools, '5_0', hex,
    non-ASCII digits), 422 for NaN, infinity or a number too large to represent."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(400, f"{source} must be {unit}, got {_shown(value)}")
    if isinstance(value, str) and not (_DECIMAL.fullmatch(value.strip()) or _NON_FINITE.fullmatch(value.strip())):
        raise ApiError(400, f"{source} must be {unit}, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int with hundreds of digits
        raise ApiError(422, f"{source} is out of range, got {_shown(value)}") from None
    if not math.isfinite(number):
        raise ApiError(422, f"{source} is out of range, got {_shown(value)}")
    return number


def parse_budget_ms(value: Any, source: str = "X-Latency-Budget-Ms") -> float | None:
    """A positive, finite number of milliseconds, or None when absent."""
    if value is None or value == "":
        return None
    budget = parse_number(value, source, "a number of milliseconds")
    if budget <= 0:
        raise ApiError(422, f"{source} must be a positive finite number, got {_shown(value)}")
    return budget


def parse_width(value: Any, widths: Sequence[float], source: str = "X-Width") -> float | None:
    """A width the model declares, or None when absent."""
    if value is None or value == "":
        return None
    matched = match_width(widths, parse_number(value, source))
    if matched is not None:
        return matched
    raise ApiError(422, f"{source} {_shown(value)} is not a declared width; choose one of {list(widths)}")


def parse_top_k(value: Any, num_classes: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        k = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        k = int(value)
    else:
        raise ApiError(400, f"top_k must be an integer, got {_shown(value)}")
    if k < 1:
        raise ApiError(422, f"top_k must be at least 1, got {k}")
    return min(k, num_classes)


def parse_json(data: bytes | memoryview) -> Any:
    """A JSON request body; 400 when it is not JSON, not UTF-8, or nested too deeply to parse."""
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: nested too deeply") from None


def split_binary_body(body: bytes | memoryview, header_length: str | None) -> tuple[dict, bytes | memoryview]:
    """The JSON header and the binary tail of a v2 request (binary-data extension); with a
    memoryview ``body`` the tail is a view of it, not a copy."""
    if header_length is None:
        json_bytes, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise ApiError(400, f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if length < 0 or length > len(body):
            raise ApiError(400, f"Inference-Header-Content-Length {length} is outside the body of {len(body)} bytes")
        json_bytes, tail = body[:length], body[length:]
    header = parse_json(json_bytes)
    if not isinstance(header, dict):
        raise ApiError(400, "inference request must be a JSON object")
    return header, tail


def decode_v2_tensor(
    spec: V2InputTensor, tail: bytes | memoryview, offset: int, expected_chw: tuple[int, int, int]
) -> tuple[np.ndarray, int]:
    """One v2 input tensor as a numpy array of shape ``[N, C, H, W]``; returns it and the new tail offset.

    ``data`` may be flat (row-major) or nested exactly as ``shape``; anything else is refused rather
    than reshaped.
    """
    name, datatype, shape = spec.name, spec.datatype, spec.shape
    if datatype not in V2_DATATYPES:
        raise ApiError(400, f"input {name!r}: datatype {datatype!r} is not supported; use one of {list(V2_DATATYPES)}")
    if len(shape) != 4 or shape[0] < 1 or tuple(shape[1:]) != expected_chw:
        raise ApiError(
            400, f"input {name!r}: shape {shape} must be [N, {', '.join(map(str, expected_chw))}] with N >= 1"
        )
    dtype = np.dtype(V2_DATATYPES[datatype]).newbyteorder("<")
    count = math.prod(shape)
    size = spec.parameters.binary_data_size if spec.parameters is not None else None
    if size is not None:
        if size != count * dtype.itemsize:
            raise ApiError(
                400,
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)",
            )
        if offset + size > len(tail):
            raise ApiError(400, f"input {name!r}: binary data ends after the request body")
        array = np.frombuffer(tail, dtype=dtype, count=count, offset=offset).reshape(shape)
        return array, offset + size
    if spec.data is None:
        raise ApiError(400, f"input {name!r}: needs 'data' or parameters.binary_data_size")
    try:
        with np.errstate(over="raise"):  # 1e10 as FP16 is an error, not a silent inf
            array = np.asarray(spec.data, dtype=dtype.newbyteorder("="))
    except FloatingPointError:
        raise ApiError(400, f"input {name!r}: data out of range for {datatype}") from None
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise ApiError(
            400, f"input {name!r}: data must be numbers of type {datatype}, flat or nested as the shape"
        ) from None
    if array.shape not in ((count,), tuple(shape)):
        raise ApiError(400, f"input {name!r}: data of shape {list(array.shape)} matches neither shape {shape} "
                            f"nor {count} values in a flat list")
    return array.reshape(shape), offset


def v2_samples(request: V2InferRequest) -> int:
    """How many samples the request's input declares (1 when its shape is not even plausible: the
    decoding step reports that), for admission before the tensor is decoded."""
    shape = request.inputs[0].shape
    return shape[0] if len(shape) == 4 and shape[0] >= 1 else 1


def v2_input_tensor(request: V2InferRequest, tail: bytes | memoryview, spec: InputSpec) -> np.ndarray:
    """The request's one input as the model's float32 ``[N, C, H, W]`` input: FP32/FP16 as sent
    (already normalised), UINT8 pixels normalised exactly as an image would be."""
    if len(request.inputs) != 1:
        raise ApiError(400, f"expected exactly one input, got {len(request.inputs)}")
    array, _ = decode_v2_tensor(request.inputs[0], tail, 0, (spec.channels, spec.size, spec.size))
    if array.dtype == np.uint8:
        array = normalize_pixels(array, spec.mean, spec.std)
    elif not (array.dtype == np.float32 and array.flags.aligned and array.flags.writeable):
        array = np.array(array, dtype=np.float32)  # own, aligned, native-endian copy
    # else: native FP32 viewing an aligned request buffer (read_body_aligned) is used in place
    if not np.isfinite(array).all():
        raise ApiError(400, "input contains NaN or infinity")
    return array
