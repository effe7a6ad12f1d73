"""``widthwise serve``: uvicorn with a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time

import uvicorn

from models.errors import CheckpointError
from server.app import build_app
from server.http.logs import configure_logging
from server.http.protocols import protocol_class
from server.settings import Settings

__all__ = ["run_server", "DrainingServer", "EXIT_FAILED"]

log = logging.getLogger("widthwise.server")
EXIT_FAILED = 3  # the engine failed while serving or starting; 2 is a bad flag or file, found before listening


class DrainingServer(uvicorn.Server):
    """A graceful drain on SIGTERM/SIGINT that loses no answer.

    Readiness turns 503 at once and new requests get 503 + Retry-After, but the listening socket
    stays open: closing it at once (uvicorn's default) reset every connection still waiting in the
    kernel's accept backlog -- 24-145 of 900 requests at 300 req/s got no answer under host load.
    Only when the queue has drained, no connection holds an unanswered request (or none yet) and
    no connection has arrived and no response completed for ``QUIET_S`` (the load balancer has
    stopped sending) does uvicorn's own shutdown run; the process then exits 0. A second signal,
    or ``timeout_graceful_shutdown``, cuts the wait short.
    """

    QUIET_S = 0.5
    POLL_S = 0.02

    def __init__(self, config: uvicorn.Config, engine) -> None:
        super().__init__(config)
        self.engine = engine
        self.failed = False
        self._draining = False
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
        if self._draining or self.should_exit:
            self._stop(sig, frame)  # a second signal: stop waiting
            return
        self._draining = True
        log.info("signal %s: draining (new requests get 503) before closing the listener", sig)
        threading.Thread(target=self._stop_when_drained, args=(sig, frame), name="widthwise-drain", daemon=True).start()

    def _stop_when_drained(self, sig, frame) -> None:
        deadline = time.monotonic() + self.config.timeout_graceful_shutdown
        activity, quiet_since = self._activity(), time.monotonic()
        while time.monotonic() < deadline and not self.should_exit:
            now, current = time.monotonic(), self._activity()
            if current != activity:
                activity, quiet_since = current, now
            elif now - quiet_since >= self.QUIET_S and self.engine.idle() and not self._requests_in_progress():
                break
            time.sleep(self.POLL_S)
        self._stop(sig, frame)

    def _activity(self) -> tuple[int, int]:
        """Responses completed and connections accepted so far."""
        return self.server_state.total_requests, getattr(self.config.http, "connections_accepted", 0)

    def _requests_in_progress(self) -> bool:
        """A connection with no request yet (just accepted) or one not answered yet."""
        return any(c.cycle is None or not c.cycle.response_complete for c in list(self.server_state.connections))

    def _stop(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after shutdown; a completed drain is a clean exit (0),
            # which is what Kubernetes and the tests expect.
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def run_server(settings: Settings) -> int:
    """Serve until stopped. Exit codes: 0 after a drain, 2 for a setting, file or port that cannot work
    (one line on stderr, before any start-up work), 3 when the engine fails (start-up or later)."""
    configure_logging(settings.log_level, settings.log_format)
    listener = None
    try:
        listener = bind_listener(settings.host, settings.port)
        if settings.grpc_port:
            check_port_free(settings.host, settings.grpc_port, "gRPC")
        raise_file_limit(settings.max_connections + FILE_RESERVE)
        app = build_app(settings)
    except (CheckpointError, ValueError, OSError) as exc:
        if listener is not None:
            listener.close()
        print(f"widthwise serve: error: {exc}", file=sys.stderr)
        return 2
    http_connections, _ = settings.connection_caps()
    config = uvicorn.Config(
        app,
        loop=settings.event_loop,
        http=protocol_class(settings.http_parser, settings.header_timeout_s, settings.max_body_bytes,
                            http_connections),
        log_level=settings.log_level,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # with the h11 parser; the middleware covers httptools
        access_log=False,  # widthwise.access logs each request with its request id, width and outcome
        log_config=None,  # keep our handlers (JSON lines when asked)
    )
    server = DrainingServer(config, app.state.engine)
    server.run(sockets=[listener])
    return EXIT_FAILED if server.failed else 0


FILE_RESERVE = 256  # descriptors beyond the connection caps: model files, the cache, logs, pipes


def bind_listener(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, bound before anything loads: a busy port is a one-line error (exit 2),
    not a start-up that exports every width and then fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def check_port_free(host: str, port: int, what: str) -> None:
    """Fail early (one line) when ``port`` cannot be bound; the server binds it itself later."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen for {what} on {host}:{port}: {exc.strerror}") from None


def raise_file_limit(needed: int) -> None:
    """Let the process hold ``needed`` descriptors (raising its soft limit toward the hard one), so the
    connection caps, not the kernel, bound what clients can open; says so when the hard limit is lower."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        log.warning("the file-descriptor limit (%d) is below what --max-connections needs (%d): lower "
                    "--max-connections or raise the limit (ulimit -n)", hard, needed)
