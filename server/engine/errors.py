"""What the engine raises besides :class:`~policies.Refused`; it knows no HTTP, the API maps these to statuses."""

from __future__ import annotations

__all__ = ["InferenceFailed", "InvalidRequest"]


class InvalidRequest(Exception):
    """The engine cannot serve the request as sent, e.g. more samples than ``--max-batch-size``
    (HTTP 400, gRPC INVALID_ARGUMENT)."""


class InferenceFailed(Exception):
    """The batch holding this request failed on the device (HTTP 500); the server keeps serving."""
