"""Optional bearer-token access control (``WIDTHWISE_API_TOKEN``)."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import ApiError

__all__ = ["require_token", "require_token_for_metrics"]


def _check(request: Request) -> None:
    token = request.app.state.settings.api_token
    if not token:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken does not reveal how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "missing or invalid bearer token", {"WWW-Authenticate": 'Bearer realm="widthwise"'})


async def require_token(request: Request) -> None:
    """Inference and model endpoints: the token, when one is configured."""
    _check(request)


async def require_token_for_metrics(request: Request) -> None:
    """``/metrics``: open unless ``--auth-metrics on``."""
    if request.app.state.settings.auth_metrics == "on":
        _check(request)
