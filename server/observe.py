"""Per-request outcome accounting shared by the native and v2 handlers."""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Callable

from .engine import Engine, InferenceResult
from .errors import ApiError
from .logs import log_fields
from .scheduler import Rejected

__all__ = ["count_outcome"]

log = logging.getLogger("widthwise.http")


@contextlib.asynccontextmanager
async def count_outcome(engine: Engine, request) -> AsyncIterator[Callable[[InferenceResult, float, float | None], bool]]:
    """Counts exactly one outcome per request in ``widthwise_requests_total``.

    The handler calls the yielded ``record(result, total_s, budget_s)`` on success,
    which returns whether the budget was met end to end (handler start to reply); an
    :class:`ApiError` counts as ``bad_request``, :class:`Rejected` as
    ``rejected``, anything else as ``error``. Exceptions propagate unchanged.
    The outcome also goes into the request's access-log line.
    """
    recorded = False

    def record(result: InferenceResult, total_s: float, budget_s: float | None) -> bool:
        nonlocal recorded
        recorded = True
        met = budget_s is None or total_s <= budget_s
        outcome = "ok" if met else "deadline_missed"
        engine.note_overhead(total_s - result.queue_s - result.inference_s)
        engine.metrics.request(result.width, outcome, total_s, engine.accuracy.get(result.width))
        log_fields(request, outcome=outcome, width=result.width, reason=result.reason, batch=result.batch_samples,
                   queue_ms=round(result.queue_s * 1e3, 3), inference_ms=round(result.inference_s * 1e3, 3))
        return met

    try:
        yield record
    except ApiError as exc:
        engine.metrics.request(None, "bad_request")
        log_fields(request, outcome="bad_request", error=exc.message)
        raise
    except Rejected as exc:
        engine.metrics.request(None, "rejected")
        log_fields(request, outcome="rejected", error=exc.message)
        raise
    except Exception as exc:
        if not recorded:
            engine.metrics.request(None, "error")
            log_fields(request, outcome="error", error=str(exc))
        raise
