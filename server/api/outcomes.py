"""Per-request outcome accounting shared by every handler (native, v2 HTTP, gRPC)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator, Protocol

from policies import Refused
from server.api.client import EngineClient
from server.engine import Admission, InferenceResult
from server.engine.errors import InvalidRequest
from server.http.errors import ApiError
from server.http.logs import log_fields
from server.metrics import Outcome, RequestRecord

__all__ = ["count_outcome", "Recorder"]

log = logging.getLogger("widthwise.http")


class Recorder(Protocol):
    def __call__(self, admission: Admission, result: InferenceResult, total_s: float, input_s: float = 0.0) -> bool:
        ...


@contextlib.asynccontextmanager
async def count_outcome(client: EngineClient, request) -> AsyncIterator[Recorder]:
    """Counts the outcome of a request in ``widthwise_requests_total``, matching its status.

    The handler calls the yielded ``record(admission, result, total_s, input_s)`` once the engine has
    answered (once per image of a several-image request); it returns whether the budget was met end
    to end (arrival to reply), as the engine judges it (:meth:`EngineClient.answered`: with
    ``--admission reject`` an answer past its budget raises :class:`~policies.Refused`, ``expired``:
    504, counted ``rejected``; no late 200s). The outcome is committed when the handler finishes:
    ``ok``/``deadline_missed`` per recorded answer if it returns normally, ``bad_request`` for an
    :class:`ApiError` (4xx) or :class:`InvalidRequest`, ``rejected`` for :class:`~policies.Refused`
    (503/504) and ``error`` for anything else (500) -- also when it fails after ``record`` (a
    request answered 500 is never counted ``ok``); a cancelled call counts ``rejected`` when its
    deadline had passed, else ``bad_request`` (the client went away). Exceptions propagate unchanged. The outcome also
    goes into the request's access-log line (``request`` has a ``scope`` dict: a Starlette request,
    or the gRPC servicer's stand-in).
    """
    began = time.monotonic()
    served: list[tuple[InferenceResult, RequestRecord]] = []
    accuracy = client.card.accuracy

    def record(admission: Admission, result: InferenceResult, total_s: float, input_s: float = 0.0) -> bool:
        met = client.answered(admission, result, total_s)
        served.append((result, RequestRecord(Outcome.OK if met else Outcome.DEADLINE_MISSED, result.width, total_s,
                                             accuracy.get(result.width), input_s, result.queue_s, result.inference_s)))
        return met

    try:
        yield record
    except (ApiError, InvalidRequest) as exc:
        _failed(client, request, Outcome.BAD_REQUEST, str(exc), began)
        raise
    except Refused as exc:
        _failed(client, request, Outcome.REJECTED, exc.message, began)
        raise
    except asyncio.CancelledError:
        # The call ended before its answer: by its deadline (a refusal, as a 504 would be) or by the
        # client going away (as HTTP's 499, a bad request).
        expired = getattr(request, "deadline_passed", lambda: False)()
        _failed(client, request, Outcome.REJECTED if expired else Outcome.BAD_REQUEST,
                "deadline passed" if expired else "cancelled by the client", began)
        raise
    except Exception as exc:
        _failed(client, request, Outcome.ERROR, str(exc) or type(exc).__name__, began)
        raise
    for _, r in served:
        client.record_outcome(r)
    if len(served) == 1:
        result, r = served[0]
        log_fields(request, outcome=r.outcome, width=result.width, reason=result.reason,
                   batch=result.batch_samples, queue_ms=round(result.queue_s * 1e3, 3),
                   inference_ms=round(result.inference_s * 1e3, 3))
    elif served:
        log_fields(request, outcome=_worst([r for _, r in served]), widths=[res.width for res, _ in served],
                   reasons=[str(res.reason) for res, _ in served])


def _failed(client: EngineClient, request, outcome: Outcome, message: str, began: float) -> None:
    client.record_outcome(RequestRecord(outcome, duration_s=time.monotonic() - began))
    log_fields(request, outcome=outcome, error=message)


def _worst(records: list[RequestRecord]) -> Outcome:
    return Outcome.DEADLINE_MISSED if any(r.outcome is Outcome.DEADLINE_MISSED for r in records) else Outcome.OK
