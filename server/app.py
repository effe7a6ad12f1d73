"""``build_app(settings) -> FastAPI``: loads the model, wires routers, handlers and the engine lifespan."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from models.embedded import DEFAULT_CHECKPOINT
from models.labels import check_label_count, read_labels
from server.api import kserve, native, ops
from server.api.errors import install_error_handlers
from server.api.warmup import RequestPathToucher, warm_request_path
from server.engine.cached_net import served_checkpoint
from server.engine.engine import Engine
from server.engine.startup import load_matching_profile
from server.engine.startup_cache import default_cache_dir
from server.http.docs import install_offline_docs
from server.http.hot_path import HotRoutes
from server.http.limits import InflightGate, InflightLimitMiddleware
from server.http.logs import RequestIdMiddleware
from server.http.security import BearerTokenMiddleware
from server.metrics import Metrics
from server.runtime import Runtime, runtime_fingerprint
from server.settings import Settings

if TYPE_CHECKING:
    pass

__all__ = ["build_app", "model_name_for", "preflight"]

log = logging.getLogger("widthwise.server")

GRPC_STOP_GRACE_S = 30.0

# The inference routes: their endpoints take only the request and path strings.
HOT_ROUTES = (
    (native.router, native.classify),
    (kserve.router, kserve.infer),
)


def model_name_for(settings: Settings, checkpoint: Path) -> str:
    """``--model-name``, else the checkpoint's file stem made URL-safe."""
    if settings.model_name:
        return settings.model_name
    return re.sub(r"[^A-Za-z0-9_.-]", "-", checkpoint.stem) or "model"


def preflight(settings: Settings) -> None:
    """Refuse, before anything loads or listens, settings that would make start-up fail later.

    Raises:
        ValueError: with what is wrong and what to do (``serve`` prints it and exits 2).
    """
    if settings.device == "cuda" or settings.precision != "fp32":
        _require_cuda(settings)
    if settings.profile is not None:
        _require_readable_file(settings.profile, "--profile",
                               "save one with `widthwise serve --save-profile PATH` or leave --profile out "
                               "to measure at start-up")


def _require_cuda(settings: Settings) -> None:
    import torch  # only when CUDA is asked for: a CPU start never needs it (server/cached_net.py)

    if settings.device == "cuda" and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ValueError(f"--device cuda: no CUDA device is available (torch {torch.__version__}, {built}); "
                         "use --device cpu or --device auto")
    if settings.precision != "fp32" and (settings.device == "cpu" or not torch.cuda.is_available()):
        raise ValueError(f"--precision {settings.precision} needs a CUDA device; use --precision fp32 on CPU")


def _require_readable_file(path: Path, flag: str, hint: str) -> None:
    if not path.exists():
        raise ValueError(f"{flag} {path}: no such file; {hint}")
    if not path.is_file():
        raise ValueError(f"{flag} {path}: not a regular file; {hint}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot be read ({exc.strerror}); {hint}") from None


def build_app(
    settings: Settings | None = None, registry: CollectorRegistry | None = None,
    runtime_factory: type[Runtime] = Runtime,
) -> FastAPI:
    """The application for one model; the engine starts in the lifespan (use ``TestClient`` as a context manager).

    ``registry`` and ``runtime_factory`` replace what the settings would build (tests inject them).
    """
    settings = settings or Settings()
    preflight(settings)
    path = Path(settings.checkpoint) if settings.checkpoint else DEFAULT_CHECKPOINT
    # --widths (or a universal net's calibrated grid), described by the start-up cache when it can be
    # (no torch, no weights read)
    cache_dir = (settings.cache_dir or default_cache_dir()) if settings.startup_cache else None
    net, card = served_checkpoint(path, settings.served_widths(), cache_dir)
    if settings.labels is not None:
        labels = read_labels(settings.labels)
        check_label_count(labels, net.num_classes, f"--labels {settings.labels}")
        card = card.with_labels(labels)
    if settings.profile is not None:  # refused before any width is exported, not after
        config = settings.runtime_config()
        load_matching_profile(settings.profile, runtime_fingerprint(
            net, config.device, config.backend, config.threads, config.precision, config.weights))
    registry = registry if registry is not None else CollectorRegistry()
    name = model_name_for(settings, path)
    if not card.accuracy_known:
        log.warning("no expected accuracy for widths %s in the checkpoint: widthwise_expected_correct_total is not "
                    "exported (measure it with `widthwise evaluate --out`)",
                    ", ".join(f"{w:g}" for w in card.widths if w not in card.accuracy))
    metrics = Metrics(registry, name, accuracy_known=card.accuracy_known)
    engine = Engine(net, settings, metrics, name, runtime_factory, card)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with engine:
            grpc_server = None
            if settings.grpc_port:  # imported only when asked for: grpcio and the generated modules
                from server.api.grpc_port import start_grpc_server

                grpc_server = await start_grpc_server(engine, settings)
                app.state.grpc_port = grpc_server  # readiness reads whether it can take calls
            try:
                yield
            finally:
                if grpc_server is not None:
                    # By now HTTP has drained (DrainingServer) and the engine refuses new work; calls
                    # still running get their answers, new ones UNAVAILABLE.
                    await grpc_server.stop(grace=GRPC_STOP_GRACE_S)

    app = WidthwiseApp(title="widthwise", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_offline_docs(app)
    # Starlette runs the last added middleware first. Order of a request: request id and access log,
    # CORS (preflights answered before auth; every response, errors included, gets CORS headers),
    # the in-flight limit, then the bearer token.
    if settings.api_token:
        app.add_middleware(BearerTokenMiddleware, token=settings.api_token, protect_metrics=settings.auth_metrics)
    app.add_middleware(
        InflightLimitMiddleware,
        gate=InflightGate(settings.max_inflight_http),
        retry_after_s=settings.retry_after_s,
        max_header_bytes=settings.max_header_bytes,
    )
    if settings.cors_origins:  # off unless configured
        app.add_middleware(
            CORSMiddleware, allow_origins=[o.strip() for o in settings.cors_origins.split(",")],
            allow_methods=["GET", "POST"], allow_headers=["*"],
            expose_headers=["X-Served-Width", "X-Width-Reason", "Server-Timing", "X-Request-Id", "Retry-After"],
        )
    app.add_middleware(RequestIdMiddleware)
    app.state.settings = settings
    app.state.registry = registry
    app.state.engine = engine
    app.state.decode_budget = native.DecodeBudget(settings.max_decoding_pixels)
    engine.before_ready.append(functools.partial(warm_request_path, app))
    engine.idle_touches.append(RequestPathToucher(app))
    install_error_handlers(app)
    app.include_router(native.router)
    app.include_router(kserve.router)
    app.include_router(ops.router)
    app.hot_routes = HotRoutes(app, _hot_routes())
    return app


def _hot_routes() -> list:
    """The inference endpoints' FastAPI routes (which also describe them in OpenAPI)."""
    found = []
    for router, endpoint in HOT_ROUTES:
        found += [route for route in router.routes if isinstance(route, APIRoute) and route.endpoint is endpoint]
    return found


class WidthwiseApp(FastAPI):
    """FastAPI, with the inference endpoints answered before its stack (server/hot_path.py)."""

    hot_routes: HotRoutes | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.hot_routes is not None:
            found = self.hot_routes.match(scope)
            if found is not None:
                await self.hot_routes.serve(scope, receive, send, *found)
                return
        await super().__call__(scope, receive, send)
