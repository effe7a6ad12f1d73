"""Native API: ``POST /v1/classify`` and ``GET /v1/models``."""

from __future__ import annotations

import functools
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..codecs import (
    CHEAP_DECODE_PIXELS, decode_opened, open_image, parse_budget_ms, parse_top_k, parse_width, top_predictions,
)
from ..errors import ApiError
from ..http_util import get_engine, parse_multipart, read_body, timing_headers
from ..logs import log_fields
from ..observe import count_outcome
from ..schemas import CLASSIFY_OPENAPI, ClassifyResponse, error_responses

router = APIRouter(tags=["native"])
INLINE_DECODE_BYTES = 64 * 1024  # ~ a 224x224 JPEG; decoding it takes well under a millisecond


@router.post(
    "/v1/classify", response_model=ClassifyResponse, openapi_extra=CLASSIFY_OPENAPI,
    responses=error_responses(400, 401, 408, 413, 415, 422, 500, 503, 504),
)
async def classify(request: Request) -> JSONResponse:
    """Classify one image (raw body or multipart field ``image``).

    Headers: ``X-Latency-Budget-Ms``, ``X-Width``. Query: ``top_k`` (default 5).
    """
    started = time.monotonic()
    engine = get_engine(request)
    settings = request.app.state.settings
    async with count_outcome(engine, request) as record:
        card = engine.card
        top_k = parse_top_k(request.query_params.get("top_k", 5), card.num_classes)
        budget_ms = parse_budget_ms(request.headers.get("x-latency-budget-ms"))
        width = parse_width(request.headers.get("x-width"), card.widths)
        log_fields(request, budget_ms=budget_ms, pinned_width=width)
        admission = engine.admit(width, budget_ms, arrival=started)  # refused here costs no decoding
        data, media_type = await image_payload(request, settings.max_body_bytes)
        image = open_image(data, media_type, settings.max_image_pixels)  # header only: size checks, 4xx
        decode = functools.partial(decode_request_image, engine, settings, image)
        # Small images decode faster than a thread hand-off costs; anything whose decoding cost is not
        # small and bounded (many pixels, even in a tiny compressed body) must not block the event loop.
        cheap = len(data) <= INLINE_DECODE_BYTES and image.width * image.height <= CHEAP_DECODE_PIXELS
        tensor = decode() if cheap else await run_in_threadpool(decode)
        result = await engine.infer(admission, tensor)
        total = time.monotonic() - started
        met = record(result, total, admission.budget_s)
        body = {
            "model": engine.model_name,
            "width": result.width,
            "predictions": top_predictions(result.logits[0], top_k, card.label),
            "timing_ms": {"queue": result.queue_s * 1e3, "inference": result.inference_s * 1e3, "total": total * 1e3},
            "budget_ms": budget_ms,
            "deadline_met": met,
        }
        return JSONResponse(body, headers=timing_headers(result, total))


def decode_request_image(engine, settings, image):
    """An image from :func:`open_image` as the model's ``[1, C, H, W]`` input, with the checkpoint's normalisation."""
    spec = engine.card.input
    return decode_opened(image, spec.size, spec.mean, spec.std, spec.channels, settings.jpeg_draft == "on")


async def image_payload(request: Request, limit: int) -> tuple[bytes, str]:
    """The image bytes and media type of a raw or multipart body."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        body = await read_body(request, limit)  # enforce the limit before parsing
        form = await parse_multipart(request.scope, body, limit)
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "multipart body needs a file field named 'image'")
            data = await upload.read()
            part_type = (upload.content_type or "").split(";")[0].strip().lower()
        finally:
            await form.close()  # releases the spooled temporary files
        return data, part_type
    if not media_type:
        raise ApiError(415, "missing Content-Type; send image/jpeg, image/png, image/webp or multipart/form-data")
    return await read_body(request, limit), media_type



@router.get("/v1/models", responses=error_responses(401))
async def list_models(request: Request) -> JSONResponse:
    """The served model: widths, MACs/params and expected accuracy per width, current latency profile."""
    return JSONResponse({"models": [get_engine(request).describe()]})
