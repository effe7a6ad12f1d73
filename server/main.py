"""``widthwise serve``: uvicorn with a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys

import uvicorn

from models.checkpoint import CheckpointError

from .app import build_app
from .logs import configure_logging
from .protocols import protocol_class
from .settings import Settings

__all__ = ["run_server", "DrainingServer", "EXIT_FAILED"]

log = logging.getLogger("widthwise.server")
EXIT_FAILED = 3  # the engine failed while serving or starting; 2 is a bad flag or file, found before listening


class DrainingServer(uvicorn.Server):
    """On SIGTERM, readiness turns 503 and new requests get 503 at once; queued and
    in-flight requests finish before uvicorn closes the lifespan and the process exits 0."""

    def __init__(self, config: uvicorn.Config, engine) -> None:
        super().__init__(config)
        self.engine = engine
        self.failed = False
        engine.on_fatal = self.fail

    def fail(self, error: str) -> None:
        """The engine cannot serve (the model could not be made ready, or its worker died): stop and
        exit non-zero (Triton does the same on a failed model load), so Kubernetes or Docker restart
        the process instead of probing one that will never be ready again."""
        log.error("%s; exiting", error)
        self.failed = True
        self.should_exit = True  # uvicorn's main loop polls this flag; safe to set from another thread

    def handle_exit(self, sig, frame) -> None:
        self.engine.begin_drain()
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after shutdown; a completed drain is a clean exit (0),
            # which is what Kubernetes and the tests expect.
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def run_server(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = build_app(settings)
    except (CheckpointError, ValueError) as exc:
        print(f"widthwise serve: error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=settings.event_loop,
        http=protocol_class(settings.http_parser, settings.header_timeout_s),
        log_level=settings.log_level,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # with the h11 parser; the middleware covers httptools
        access_log=False,  # widthwise.access logs each request with its request id, width and outcome
        log_config=None,  # keep our handlers (JSON lines when asked)
    )
    server = DrainingServer(config, app.state.engine)
    server.run()
    return EXIT_FAILED if server.failed else 0
