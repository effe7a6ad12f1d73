"""Native API: ``POST /v1/classify`` and ``GET /v1/models``."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from policies import RefusalReason, Refused
from server.api.codecs import (
    CHEAP_DECODE_PIXELS,
    decode_base64_image,
    decode_opened,
    open_image,
    parse_budget_ms,
    parse_json,
    parse_top_k,
    parse_width,
    top_predictions,
)
from server.api.outcomes import count_outcome
from server.api.replies import get_engine, timing_headers
from server.api.schemas import CLASSIFY_OPENAPI, ClassifyManyResponse, ClassifyResponse, error_responses
from server.engine import Admission
from server.http.body import arrival, parse_multipart, read_body
from server.http.errors import ApiError
from server.http.logs import log_fields
from server.metrics import width_label

router = APIRouter(tags=["native"])
INLINE_DECODE_BYTES = 64 * 1024  # ~ a 224x224 JPEG; decoding it takes well under a millisecond


@router.post(
    "/v1/classify", response_model=ClassifyResponse | ClassifyManyResponse, openapi_extra=CLASSIFY_OPENAPI,
    responses=error_responses(400, 401, 408, 413, 415, 422, 500, 503, 504),
)
async def classify(request: Request) -> JSONResponse:
    """Classify one image (raw body, multipart field ``image``, or JSON ``{"image": base64}``), or several
    (repeated multipart ``image`` fields, or JSON ``{"images": [base64, ...]}``), answered as a list in order.

    Headers: ``X-Latency-Budget-Ms``, ``X-Width``. Query: ``top_k`` (default 5).
    """
    started = arrival(request)  # the budget counts from the request's first byte
    engine = get_engine(request)
    settings = request.app.state.settings
    async with count_outcome(engine, request) as record:
        card = engine.card
        top_k = parse_top_k(request.query_params.get("top_k", 5), card.num_classes)
        budget_ms = parse_budget_ms(request.headers.get("x-latency-budget-ms"))
        width = parse_width(request.headers.get("x-width"), card.widths)
        log_fields(request, budget_ms=budget_ms, pinned_width=width)
        admission = engine.admit(width, budget_ms, arrival=started)  # refused here costs no decoding
        images, several = await image_payloads(request, settings)
        if several:
            log_fields(request, images=len(images))
        tensors = await decode_images(engine, settings, images, admission, request.app.state.decode_budget)
        input_s = time.monotonic() - started
        # Each image is its own request to the engine (same budget and arrival): batched with the others.
        if len(tensors) == 1:
            results = [await engine.infer(admission, tensors[0])]
        else:
            results = await asyncio.gather(*(engine.infer(admission, tensor) for tensor in tensors))
        total = time.monotonic() - started
        answers = []
        for result in results:
            met = record(admission, result, total, input_s)
            answers.append({
                "width": result.width,
                "reason": str(result.reason),
                "predictions": top_predictions(result.logits[0], top_k, card.label),
                "timing_ms": {"queue": result.queue_s * 1e3, "inference": result.inference_s * 1e3,
                              "total": total * 1e3},
                "deadline_met": met,
            })
        if not several:
            body = {"model": engine.name, **answers[0], "budget_ms": budget_ms}
            return JSONResponse(body, headers=timing_headers(results[0], total, input_s))
        body = {"model": engine.name, "results": answers, "timing_ms": {"total": total * 1e3},
                "budget_ms": budget_ms, "deadline_met": all(a["deadline_met"] for a in answers)}
        headers = {"X-Served-Width": ", ".join(width_label(r.width) for r in results),
                   "X-Width-Reason": ", ".join(str(r.reason) for r in results),
                   "Server-Timing": f"total;dur={total * 1e3:.3f}"}
        return JSONResponse(body, headers=headers)


def decode_request_image(engine, settings, image):
    """An image from :func:`open_image` as the model's ``[1, C, H, W]`` input, with the checkpoint's normalisation."""
    spec = engine.card.input
    return decode_opened(image, spec.size, spec.mean, spec.std, spec.channels, settings.jpeg_draft)


class DecodeBudget:
    """Pixels being decoded right now, across requests (``--max-decoding-pixels``): what bounds the
    memory decoding can take whatever the clients send. Only touched on the event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0

    def reserve(self, pixels: int) -> None:
        """Take ``pixels`` or refuse the request (503): decoding them would go over the budget."""
        if self.inflight and self.inflight + pixels > self.limit:
            raise Refused(RefusalReason.OVERLOADED, f"overloaded: {self.inflight} pixels are being decoded "
                                                    f"(limit {self.limit}); retry shortly")
        self.inflight += pixels

    def release(self, pixels: int) -> None:
        self.inflight -= pixels


async def decode_images(engine, settings, payloads: list[tuple[bytes, str]], admission: Admission,
                        budget: DecodeBudget) -> list:
    """Every image checked (header only, on the loop: size and format 4xx before any pixel work), then
    decoded: small ones inline -- faster than a thread hand-off -- the rest in one worker thread, so
    nothing whose decoding cost is not small and bounded (many pixels, even in a tiny compressed
    body) blocks the event loop.

    Memory is bounded per request and across them, before any pixel is decoded: all the request's
    images together at most ``--max-request-pixels`` (413), and the pixels being decoded by every request
    at most ``--max-decoding-pixels`` (503). Decoding stops (504) once the request's deadline has passed:
    its answer could only be refused."""
    opened = [(data, open_image(data, media_type, settings.max_image_pixels)) for data, media_type in payloads]
    pixels = sum(image.width * image.height for _, image in opened)
    if pixels > settings.max_request_pixels:
        raise ApiError(413, f"the request's images hold {pixels} pixels; at most {settings.max_request_pixels} "
                            "per request")
    cheap = all(len(data) <= INLINE_DECODE_BYTES and image.width * image.height <= CHEAP_DECODE_PIXELS
                for data, image in opened)
    deadline = admission.deadline.at

    def decode_all() -> list:
        tensors = []
        for _, image in opened:
            if time.monotonic() > deadline:
                raise Refused(RefusalReason.EXPIRED, "the request's deadline passed while its images were decoded")
            tensors.append(decode_request_image(engine, settings, image))
        return tensors

    budget.reserve(pixels)
    try:
        return decode_all() if cheap else await run_in_threadpool(decode_all)
    finally:
        budget.release(pixels)


async def image_payloads(request: Request, settings) -> tuple[list[tuple[bytes, str]], bool]:
    """The images of a raw, multipart or JSON body as ``(bytes, media type)``, and whether the client
    sent a list (several multipart fields, or JSON ``images``), which is answered as a list."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    limit, most = settings.max_body_bytes, settings.max_images_per_request
    if media_type == "multipart/form-data":
        body = await read_body(request, limit)  # enforce the limit before parsing
        form = await parse_multipart(request.scope, body, limit, max_files=most)
        try:
            uploads = form.getlist("image")
            if not uploads or any(isinstance(u, str) for u in uploads):
                raise ApiError(400, "multipart body needs a file field named 'image'")
            images = [(await u.read(), (u.content_type or "").split(";")[0].strip().lower()) for u in uploads]
        finally:
            await form.close()  # releases the spooled temporary files
        return images, len(images) > 1
    if media_type == "application/json":
        body = await read_body(request, limit)
        if len(body) > INLINE_DECODE_BYTES:  # base64-decoding megabytes: not on the event loop
            return await run_in_threadpool(json_images, body, most)
        return json_images(body, most)
    if not media_type:
        raise ApiError(415, "missing Content-Type; send image/jpeg, image/png, image/webp, multipart/form-data "
                            "or application/json")
    return [(await read_body(request, limit), media_type)], False


def json_images(body: bytes, most: int) -> tuple[list[tuple[bytes, str]], bool]:
    """``{"image": b64}`` (one) or ``{"images": [b64, ...]}`` (a list), each base64 or a ``data:`` URL."""
    document = parse_json(body)
    if not isinstance(document, dict) or ("image" in document) == ("images" in document):
        raise ApiError(400, 'JSON body must be an object with "image" (one base64 image) or "images" (a list)')
    if "image" in document:
        return [decode_base64_image(document["image"], "image")], False
    images = document["images"]
    if not isinstance(images, list) or not images:
        raise ApiError(400, '"images" must be a non-empty list of base64 images')
    if len(images) > most:
        raise ApiError(413, f"{len(images)} images exceed the limit of {most} per request")
    return [decode_base64_image(item, f"images[{i}]") for i, item in enumerate(images)], True


@router.get("/v1/models", responses=error_responses(401))
async def list_models(request: Request) -> JSONResponse:
    """The served model: widths, MACs/params and expected accuracy per width, current latency profile."""
    return JSONResponse({"models": [get_engine(request).describe()]})
