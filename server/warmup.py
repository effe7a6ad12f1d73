"""Warm every path a request takes before ``/readyz`` turns 200.

The first request after start-up used to pay for work done once per process:
Pillow registering its codec plugins (it imports every plugin the first time a
format outside its core five is opened), python-multipart's import, torch's
first softmax/top-k, the first JSON render. Measured on a quiet 2-core host
that made the first ``/v1/classify`` take 13.5 ms in the server against 2.7 ms
for the next ones, and a busy host stretched it past a 25 ms budget (504).
This module runs the handlers' own helpers once, in-process, on synthetic
requests, without going through the engine's queue (so metrics stay untouched).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.requests import Request

from .codecs import IMAGE_MEDIA_TYPES, open_image, split_binary_body, top_predictions
from .routers import kserve, native
from .v2_request import parse_v2_request

__all__ = ["warm_request_path"]

log = logging.getLogger("widthwise.engine")
BOUNDARY = "widthwise-warmup"


def warm_request_path(app: FastAPI) -> None:
    """Run each request path once (called in the engine's start-up thread, after the model is warm)."""
    log.info("start-up: warming the request path (image codecs, multipart, v2 tensors, replies)")
    asyncio.run(_warm(app))


async def _warm(app: FastAPI) -> None:
    engine, settings = app.state.engine, app.state.settings
    net = engine.net
    mode = "RGB" if net.in_channels == 3 else "L"
    # Not square and not the input size, so resizing and cropping run too.
    image = Image.fromarray(np.full((net.input_size + 3, 2 * net.input_size + 1, 3), 127, np.uint8)).convert(mode)
    tensor = None
    for media_type, fmt in IMAGE_MEDIA_TYPES.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        data = buffer.getvalue()
        for content_type, body in ((media_type, data), _multipart(data, media_type)):
            payload, payload_type = await native.image_payload(_request(app, content_type, body), settings.max_body_bytes)
            opened = open_image(payload, payload_type, settings.max_image_pixels)
            tensor = native.decode_request_image(engine, settings, opened)
    logits = engine.runtime.run(net.widths[-1], tensor)
    JSONResponse({"predictions": top_predictions(logits[0], 5, engine.label), "timing_ms": {"total": 1.0}})
    # v2: JSON FP32 and binary UINT8 inputs, JSON and binary outputs.
    shape = [1, net.in_channels, net.input_size, net.input_size]
    header = {"inputs": [{"name": kserve.INPUT_NAME, "datatype": "FP32", "shape": shape,
                          "data": [0.0] * int(np.prod(shape))}]}
    parsed, tail = split_binary_body(json.dumps(header).encode(), None)
    kserve.input_tensor(parse_v2_request(parsed), tail, engine)
    raw = np.zeros(shape, np.uint8).tobytes()
    header = {"inputs": [{"name": kserve.INPUT_NAME, "datatype": "UINT8", "shape": shape,
                          "parameters": {"binary_data_size": len(raw)}}]}
    head = json.dumps(header).encode()
    parsed, tail = split_binary_body(memoryview(head + raw), str(len(head)))
    kserve.input_tensor(parse_v2_request(parsed), tail, engine)
    values = np.ascontiguousarray(logits.float().numpy())
    JSONResponse({"outputs": [{"data": values.ravel().tolist()}]})
    values.astype("<f4").tobytes()


def _multipart(data: bytes, media_type: str) -> tuple[str, bytes]:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"warmup\"\r\n"
            f"Content-Type: {media_type}\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    return f"multipart/form-data; boundary={BOUNDARY}", body


def _request(app: FastAPI, content_type: str, body: bytes) -> Request:
    scope = {
        "type": "http", "method": "POST", "path": "/v1/classify", "query_string": b"", "app": app,
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
    }
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)
