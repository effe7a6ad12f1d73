"""``widthwise serve`` in a subprocess on 127.0.0.1 and a free port, for tests and benchmarks.

What TestClient is to one app, this is to the whole server: a real process with its own event loop,
uvicorn protocols, signals and exit code. Needs no test dependency (the readiness probe is stdlib).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["LiveServer", "ServerUrl", "free_port", "live_server"]

# The folder holding the `server` package this process runs (a checkout's root, or site-packages).
OWN_TREE = Path(__file__).resolve().parents[1]

_PORTS_GIVEN: set[int] = set()  # by free_port in this process


def free_port() -> int:
    """A port free on 127.0.0.1 now and never given out before by this process: the kernel can hand
    the same ephemeral port to two probes in a row (a server's HTTP port and its gRPC port once came
    out equal, and the second bind failed)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


class ServerUrl(str):
    """The server's base URL; ``.pid`` is its process id."""

    def __new__(cls, url: str, pid: int) -> "ServerUrl":
        obj = super().__new__(cls, url)
        obj.pid = pid
        return obj


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


class LiveServer:
    """``widthwise serve ARGS`` in a subprocess on 127.0.0.1 and a free port.

    ``tree`` is the source tree to run (another checkout, for A/B benchmarks; default: this one).
    Output goes to a temporary file, not a pipe: a pipe nobody reads would block the server once full.
    """

    def __init__(self, *args: str, env: dict | None = None, tree: Path | None = None,
                 cpus: set[int] | None = None) -> None:
        """``cpus``: run the server on these cores only (its threads inherit the affinity), as ``taskset`` would."""
        self.port = free_port()
        self.url = ServerUrl(f"http://127.0.0.1:{self.port}", 0)
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log = tempfile.TemporaryFile("w+")
        environ = {**os.environ, **(env or {})}
        if tree is not None and Path(tree).resolve() != OWN_TREE:
            environ["PYTHONPATH"] = str(tree)
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(cmd, cwd=tree or OWN_TREE, env=environ, stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True, preexec_fn=pin)
        self.url.pid = self.proc.pid

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            if _status(self.url + "/readyz") == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready within {timeout:g} s: {self.output()[-2000:]}")

    def terminate(self) -> int:
        """SIGTERM (the server drains, then exits); returns the exit code."""
        self.proc.terminate()
        return self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@contextlib.contextmanager
def live_server(*args: str, ready_timeout: float = 300.0, tree: Path | None = None, cpus: set[int] | None = None):
    """``widthwise serve ARGS`` on a free port; yields its base URL (with ``.pid``); SIGTERM on exit."""
    server = LiveServer("--log-level", "warning", *args, tree=tree, cpus=cpus)
    try:
        server.wait_ready(ready_timeout)
        yield server.url
    finally:
        if server.proc.poll() is None:
            server.terminate()
        server.stop()
