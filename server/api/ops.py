"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    """Alive: the process answers HTTP."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"description": "starting, draining or failed"}})
async def readyz(request: Request) -> JSONResponse:
    """200 once weights are loaded, switches exported and warmed up and the profile measured."""
    engine = request.app.state.engine
    state = engine.state
    grpc_port = getattr(request.app.state, "grpc_port", None)
    if engine.ready and not (grpc_port is not None and grpc_port.saturated):
        return JSONResponse({"status": state.value})
    body = {"status": state.value}
    if engine.failure:
        body["error"] = engine.failure
    elif engine.ready:  # the model is, but gRPC calls are refused until a slot frees
        body["error"] = f"the gRPC port is at its limit of {grpc_port.gate.limit} calls in flight"
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {}}},
        401: {"description": "token required"},
    },
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
