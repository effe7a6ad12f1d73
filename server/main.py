"""Entry point of ``widthwise serve`` (replaced by the real server in the server module)."""
from __future__ import annotations


def run_server(settings) -> int:
    raise NotImplementedError
