"""Bad input gets a JSON 4xx, is counted as bad_request, and the next good request still works."""

import struct
import zlib

import pytest

from tests.conftest import png_bytes

GOOD = png_bytes()


def _png_with_size(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


CASES = {
    "truncated png": (GOOD[: len(GOOD) // 2], {"content-type": "image/png"}, 400),
    "corrupt bytes": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, {"content-type": "image/png"}, 400),
    "text body": (b"hello world", {"content-type": "text/plain"}, 415),
    "gif media type": (GOOD, {"content-type": "image/gif"}, 415),
    "no content type": (GOOD, {"content-type": ""}, 415),
    "empty body": (b"", {"content-type": "image/png"}, 400),
    "zero dimensions": (_png_with_size(0, 0), {"content-type": "image/png"}, 400),
    "decompression bomb header": (_png_with_size(100_000, 100_000), {"content-type": "image/png"}, 413),
    "over pixel limit": (png_bytes(size=(300, 300)), {"content-type": "image/png"}, 413),
    "negative budget": (GOOD, {"content-type": "image/png", "X-Latency-Budget-Ms": "-5"}, 422),
    "zero budget": (GOOD, {"content-type": "image/png", "X-Latency-Budget-Ms": "0"}, 422),
    "nan budget": (GOOD, {"content-type": "image/png", "X-Latency-Budget-Ms": "nan"}, 422),
    "infinite budget": (GOOD, {"content-type": "image/png", "X-Latency-Budget-Ms": "inf"}, 422),
    "text budget": (GOOD, {"content-type": "image/png", "X-Latency-Budget-Ms": "soon"}, 400),
    "undeclared width": (GOOD, {"content-type": "image/png", "X-Width": "0.6"}, 422),
    "text width": (GOOD, {"content-type": "image/png", "X-Width": "wide"}, 400),
    "multipart without image": (b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
                                {"content-type": "multipart/form-data; boundary=b"}, 400),
}


@pytest.fixture
def client(make_client):
    return make_client(max_image_pixels=200 * 200, max_body_bytes=64 * 1024)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_image_request_is_a_counted_4xx_and_server_keeps_serving(client, name):
    body, headers, status = CASES[name]
    r = client.post("/v1/classify", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert client.registry.get_sample_value(
        "widthwise_requests_total", {"model": "tiny", "width": "none", "outcome": "bad_request"}
    ) == 1
    ok = client.post("/v1/classify", content=GOOD, headers={"content-type": "image/png"})
    assert ok.status_code == 200


def test_body_over_limit_is_413(client):
    r = client.post("/v1/classify", content=b"\x00" * (65 * 1024), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    assert client.post("/v1/classify", content=GOOD, headers={"content-type": "image/png"}).status_code == 200


@pytest.mark.parametrize("top_k,status", [("0", 422), ("-3", 422), ("many", 400)])
def test_bad_top_k(client, top_k, status):
    r = client.post(f"/v1/classify?top_k={top_k}", content=GOOD, headers={"content-type": "image/png"})
    assert r.status_code == status


def test_top_k_is_capped_at_number_of_classes(client):
    r = client.post("/v1/classify?top_k=50", content=GOOD, headers={"content-type": "image/png"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 10


def test_unknown_route_and_method_are_json_errors(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/classify")
    assert r.status_code == 405 and "error" in r.json()
