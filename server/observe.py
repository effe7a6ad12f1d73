"""Per-request outcome accounting shared by the native and v2 handlers."""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Callable

from policies import Refused

from .engine import Engine, InferenceResult
from .errors import ApiError, InvalidRequest
from .logs import log_fields
from .metrics import Outcome, RequestRecord

__all__ = ["count_outcome"]

log = logging.getLogger("widthwise.http")


@contextlib.asynccontextmanager
async def count_outcome(engine: Engine, request) -> AsyncIterator[Callable[[InferenceResult, float, float | None], bool]]:
    """Counts exactly one outcome per request in ``widthwise_requests_total``, matching its status.

    The handler calls the yielded ``record(result, total_s, budget_s)`` once the engine has
    answered; it returns whether the budget was met end to end (handler start to reply). The
    outcome is committed when the handler finishes: ``ok``/``deadline_missed`` if it returns
    normally, ``bad_request`` for an :class:`ApiError` (4xx), ``rejected`` for :class:`~policies.Refused`
    (503/504), ``bad_request`` for :class:`InvalidRequest` and ``error`` for anything else (500) -- also when it fails after ``record`` (a
    request answered 500 is never counted ``ok``). Exceptions propagate unchanged. The outcome also
    goes into the request's access-log line.
    """
    served: list = []

    def record(result: InferenceResult, total_s: float, budget_s: float | None) -> bool:
        met = budget_s is None or total_s <= budget_s
        served[:] = [result, total_s, Outcome.OK if met else Outcome.DEADLINE_MISSED]
        engine.note_overhead(total_s - result.queue_s - result.inference_s)
        return met

    try:
        yield record
    except (ApiError, InvalidRequest) as exc:
        engine.metrics.record_request(RequestRecord(Outcome.BAD_REQUEST))
        log_fields(request, outcome=Outcome.BAD_REQUEST, error=str(exc))
        raise
    except Refused as exc:
        engine.metrics.record_request(RequestRecord(Outcome.REJECTED))
        log_fields(request, outcome=Outcome.REJECTED, error=exc.message)
        raise
    except Exception as exc:
        engine.metrics.record_request(RequestRecord(Outcome.ERROR))
        log_fields(request, outcome=Outcome.ERROR, error=str(exc))
        raise
    if served:
        result, total_s, outcome = served
        engine.metrics.record_request(RequestRecord(outcome, result.width, total_s, engine.card.accuracy.get(result.width)))
        log_fields(request, outcome=outcome, width=result.width, reason=result.reason, batch=result.batch_samples,
                   queue_ms=round(result.queue_s * 1e3, 3), inference_ms=round(result.inference_s * 1e3, 3))
