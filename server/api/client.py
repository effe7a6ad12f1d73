"""The engine as the protocols see it: what every handler (native, v2 over HTTP and gRPC, operations)
may ask of the model it serves, and nothing more (vLLM's ``EngineClient`` in small). Typed against
this, ``api/`` never reaches into the runtime, the metrics or the scheduler."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from models.card import ModelCard
from server.engine import Admission, InferenceResult, Readiness
from server.metrics import RequestRecord
from server.statistics import ModelStatistics

__all__ = ["EngineClient"]


class EngineClient(Protocol):
    name: str  # the model's name in URLs, answers and metrics
    card: ModelCard
    state: Readiness
    failure: str | None  # why it cannot serve (failed start-up, a dead worker); None while it can

    @property
    def ready(self) -> bool: ...

    def admit(self, width: float | None, budget_ms: float | None, arrival: float, samples: int = 1) -> Admission:
        """Before the body is decoded: the request's deadline and a cheap refusal (raises ``Refused``)."""

    async def infer(self, admission: Admission, tensor: np.ndarray) -> InferenceResult:
        """Queue ``tensor`` ([samples, C, H, W]) and wait for its logits."""

    def answered(self, admission: Admission, result: InferenceResult, total_s: float) -> bool:
        """Whether an answer ``total_s`` after arrival meets the budget (raises ``Refused`` when too late to send)."""

    def record_outcome(self, record: RequestRecord) -> None:
        """Count one request's outcome."""

    def describe(self) -> dict:
        """The model, its widths and the server's view of them (``GET /v1/models``)."""

    def statistics(self) -> ModelStatistics:
        """Triton's statistics of the model."""
