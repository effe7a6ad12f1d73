"""server.testing: the live-server launcher every bench program and live test shares."""


def test_free_port_never_gives_the_same_port_twice(monkeypatch):
    # a kernel that hands out the same ephemeral port to back-to-back probes (it happened: a server's
    # HTTP and gRPC ports came out equal) must not make two callers share a port
    from server import testing as common

    ports = iter([50001, 50001, 50001, 50002])

    class FakeSocket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(ports)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(common, "_PORTS_GIVEN", set())
    monkeypatch.setattr(common.socket, "socket", lambda *a, **k: FakeSocket())
    assert common.free_port() == 50001
    assert common.free_port() == 50002
