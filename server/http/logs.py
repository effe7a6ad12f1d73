"""Request ids and structured access logs.

An ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware) takes the
client's ``X-Request-Id`` or makes one, echoes it on the response, and logs one
line per request with the fields handlers add (width, budget, outcome,
timings). ``--log-format json`` writes each record as one JSON object.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
import uuid
from typing import Any

__all__ = ["request_id_or_new", "RequestIdMiddleware", "JsonFormatter", "configure_logging", "log_fields"]

access_log = logging.getLogger("widthwise.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_or_new(candidate: str | None) -> str:
    """The client's request id when it is a plain token (1-128 of ``A-Za-z0-9._:-``), else a new one."""
    return candidate if candidate is not None and _VALID_ID.match(candidate) else uuid.uuid4().hex


def log_fields(request, **fields: Any) -> None:
    """Attach fields to this request's access-log line."""
    request.scope.setdefault("widthwise.log", {}).update(fields)


class RequestIdMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        candidate = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                break
        request_id = request_id_or_new(candidate)
        scope["widthwise.request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO) and scope["path"] not in ("/healthz", "/readyz", "/metrics"):
                fields = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1e3, 3),
                    **scope.get("widthwise.log", {}),
                }
                access_log.info("request", extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC, milliseconds), level, logger, message and any
    structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        payload = {"time": moment.isoformat(timespec="milliseconds"), "level": record.levelname, "logger": record.name,
                   "message": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


_PLAIN = re.compile(r"[A-Za-z0-9._:/@%+,()\[\]-]*")


def text_value(value: Any) -> str:
    """A field value safe for one text log line: plain tokens as they are, anything else (spaces,
    quotes, '=', control characters, line or paragraph separators, escape sequences) JSON-quoted, so
    a client-controlled path, header or id can never start a new line or forge a field."""
    text = value if isinstance(value, str) else str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = getattr(record, "fields", None)
        return base + (" " + " ".join(f"{k}={text_value(v)}" for k, v in fields.items()) if fields else "")


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
