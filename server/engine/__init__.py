"""The engine: admission, the batch worker and its watchdog, start-up (export, cache, profile) and the
host probe. Knows neither HTTP nor a backend library; the protocols reach it through ``EngineClient``."""

from server.engine.engine import Admission, Engine, InferenceResult, Readiness
from server.engine.errors import InferenceFailed, InvalidRequest

__all__ = ["Admission", "Engine", "InferenceFailed", "InferenceResult", "InvalidRequest", "Readiness"]
