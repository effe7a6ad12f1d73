"""Fixtures of the protocol tests."""

from __future__ import annotations

import pytest

from server.testing import free_port


@pytest.fixture
def grpc_server(live_server):
    """``start(*flags) -> (server, grpc_address)``: a live server with gRPC on a free port."""

    def start(*extra: str):
        port = free_port()
        server = live_server("--grpc-port", str(port), *extra)
        return server, f"127.0.0.1:{port}"

    return start
