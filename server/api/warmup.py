"""Warm every path a request takes before ``/readyz`` turns 200.

The first request after start-up used to pay for work done once per process:
Pillow registering its codec plugins (it imports every plugin the first time a
format outside its core five is opened), python-multipart's import, the first
softmax/top-k, the first JSON render. Measured on a quiet 2-core host
that made the first ``/v1/classify`` take 13.5 ms in the server against 2.7 ms
for the next ones, and a busy host stretched it past a 25 ms budget (504).
This module runs the handlers' own helpers once, in-process, on synthetic
requests, without going through the engine's queue (so metrics stay untouched).
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import python_multipart
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from PIL import Image

from server.api import native
from server.api.codecs import IMAGE_MEDIA_TYPES, open_image, split_binary_body, top_predictions, v2_input_tensor
from server.api.v2_request import parse_v2_request
from server.api.v2_service import INPUT_NAME

__all__ = ["warm_request_path", "RequestPathToucher"]

log = logging.getLogger("widthwise.engine")
BOUNDARY = "widthwise-warmup"


def warm_request_path(app: FastAPI) -> None:
    """Run each request path once (called in the engine's start-up thread, after the model is warm).

    Synchronously: an event loop run in this thread for the async helpers (``asyncio.run``) left
    the server ~0.2 ms slower per request afterwards (bench.overhead_ab, inference and overhead
    alike), so multipart bodies are parsed here with python-multipart directly, the parser
    Starlette's ``Request.form()`` runs.
    """
    log.info("start-up: warming the request path (image codecs, multipart, v2 tensors, replies)")
    engine, settings = app.state.engine, app.state.settings
    spec = engine.card.input
    mode = "RGB" if spec.channels == 3 else "L"
    # Not square and not the input size, so resizing and cropping run too.
    image = Image.fromarray(np.full((spec.size + 3, 2 * spec.size + 1, 3), 127, np.uint8)).convert(mode)
    for media_type, fmt in IMAGE_MEDIA_TYPES.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        data = buffer.getvalue()
        for payload in (data, _parsed_multipart_image(data, media_type)):
            opened = open_image(payload, media_type, settings.max_image_pixels)
            native.decode_request_image(engine, settings, opened)
    logits = np.zeros((1, engine.card.num_classes), np.float32)  # the model itself is warm already
    JSONResponse({"predictions": top_predictions(logits[0], 5, engine.card.label), "timing_ms": {"total": 1.0}})
    # v2: JSON FP32 and binary UINT8 inputs, JSON and binary outputs.
    shape = [1, spec.channels, spec.size, spec.size]
    header = {"inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": shape,
                          "data": [0.0] * int(np.prod(shape))}]}
    parsed, tail = split_binary_body(json.dumps(header).encode(), None)
    v2_input_tensor(parse_v2_request(parsed), tail, spec)
    raw = np.zeros(shape, np.uint8).tobytes()
    header = {"inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": shape,
                          "parameters": {"binary_data_size": len(raw)}}]}
    head = json.dumps(header).encode()
    parsed, tail = split_binary_body(memoryview(head + raw), str(len(head)))
    v2_input_tensor(parse_v2_request(parsed), tail, spec)
    values = np.ascontiguousarray(logits, dtype=np.float32)
    JSONResponse({"outputs": [{"data": values.ravel().tolist()}]})
    values.astype("<f4").tobytes()


def _parsed_multipart_image(data: bytes, media_type: str) -> bytes:
    """``data`` sent as the multipart field ``image`` and parsed back out."""
    content_type, body = _multipart(data, media_type)
    files = []
    python_multipart.parse_form({"Content-Type": content_type.encode(), "Content-Length": str(len(body)).encode()},
                                io.BytesIO(body), None, files.append)
    files[0].file_object.seek(0)
    return files[0].file_object.read()


def _multipart(data: bytes, media_type: str) -> tuple[str, bytes]:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"warmup\"\r\n"
            f"Content-Type: {media_type}\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    return f"multipart/form-data; boundary={BOUNDARY}", body


class RequestPathToucher:
    """The common request path in small: one PNG of the input's size opened, decoded and normalised as
    the handlers do, and a reply rendered. The keep-warm loop (server/keep_warm.py) runs it when idle:
    after an idle spell the handler's decode was the slowest part of the first request (~9 ms of 14 ms
    on the project's VM). Light enough to run every idle period (a fraction of a millisecond warm)."""

    def __init__(self, app: FastAPI) -> None:
        self.engine, self.settings = app.state.engine, app.state.settings
        spec = self.engine.card.input
        mode = "RGB" if spec.channels == 3 else "L"
        buffer = io.BytesIO()
        Image.fromarray(np.full((spec.size, spec.size, 3), 127, np.uint8)).convert(mode).save(buffer, "PNG")
        self.png = buffer.getvalue()
        self.logits = np.zeros(self.engine.card.num_classes, np.float32)

    def __call__(self) -> None:
        opened = open_image(self.png, "image/png", self.settings.max_image_pixels)
        native.decode_request_image(self.engine, self.settings, opened)
        JSONResponse({"predictions": top_predictions(self.logits, min(5, self.logits.size), self.engine.card.label),
                      "timing_ms": {"total": 1.0}})
