"""Per-request outcome accounting shared by the native and v2 handlers."""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Callable

from .engine import Engine, InferenceResult
from .errors import ApiError
from .scheduler import Rejected

__all__ = ["count_outcome"]

log = logging.getLogger("widthwise.http")


@contextlib.asynccontextmanager
async def count_outcome(engine: Engine) -> AsyncIterator[Callable[[InferenceResult, float], None]]:
    """Counts exactly one outcome per request in ``widthwise_requests_total``.

    The handler calls the yielded ``record(result, total_s)`` on success; an
    :class:`ApiError` counts as ``bad_request``, :class:`Rejected` as
    ``rejected``, anything else as ``error``. Exceptions propagate unchanged.
    """
    recorded = False

    def record(result: InferenceResult, total_s: float) -> None:
        nonlocal recorded
        recorded = True
        outcome = "ok" if result.deadline_met else "deadline_missed"
        engine.metrics.request(result.width, outcome, total_s, engine.accuracy.get(result.width))

    try:
        yield record
    except ApiError:
        engine.metrics.request(None, "bad_request")
        raise
    except Rejected:
        engine.metrics.request(None, "rejected")
        raise
    except Exception:
        if not recorded:
            engine.metrics.request(None, "error")
        raise
