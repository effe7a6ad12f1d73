"""What the routers share: the engine of a request, and the headers every answer carries."""

from __future__ import annotations

from fastapi import Request

from server.api.client import EngineClient
from server.engine import InferenceResult
from server.metrics import width_label

__all__ = ["get_engine", "timing_headers"]


def get_engine(request: Request) -> EngineClient:
    return request.app.state.engine


def timing_headers(result: InferenceResult, total_s: float, input_s: float) -> dict[str, str]:
    """Width, reason and ``Server-Timing``: ``input`` (first byte until queued: receiving, parsing,
    decoding), ``queue``, ``inference`` and ``total`` from the first byte; what ``total`` has beyond
    the other three is the batch's hand-back to the handler (the event loop's delay)."""
    return {
        "X-Served-Width": width_label(result.width),
        "X-Width-Reason": str(result.reason),
        "Server-Timing": (
            f"queue;dur={result.queue_s * 1e3:.3f}, inference;dur={result.inference_s * 1e3:.3f}, "
            f"total;dur={total_s * 1e3:.3f}, input;dur={input_s * 1e3:.3f}"
        ),
    }
