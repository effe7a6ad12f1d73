"""Bad input gets a JSON 4xx, is counted as bad_request, and the next good request still works."""

import struct
import zlib

import pytest

from tests.helpers import png_bytes

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
    "extreme aspect ratio": (_png_with_size(4000, 10), {"content-type": "image/png"}, 413),
    "underscore budget": (GOOD, {"content-type": "image/png", "X-Latency-Budget-Ms": "5_0"}, 400),
    "underscore width": (GOOD, {"content-type": "image/png", "X-Width": "0.2_5"}, 400),
    "non-ASCII digits budget": (
        GOOD,
        {"content-type": "image/png", "X-Latency-Budget-Ms": "\u0665\u0660".encode()},
        400,
    ),
    "huge budget": (GOOD, {"content-type": "image/png", "X-Latency-Budget-Ms": "9" * 401}, 422),
    "multipart without image": (
        b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
        {"content-type": "multipart/form-data; boundary=b"},
        400,
    ),
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
    assert " at 0x" not in r.json()["error"]  # no object reprs (heap addresses) in messages
    assert client.registry.get_sample_value(
        "widthwise_requests_total", {"model": "tiny", "width": "none", "outcome": "bad_request"}
    ) == 1
    ok = client.post("/v1/classify", content=GOOD, headers={"content-type": "image/png"})
    assert ok.status_code == 200


def test_body_over_limit_is_413(client):
    r = client.post("/v1/classify", content=b"\x00" * (65 * 1024), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    assert client.post("/v1/classify", content=GOOD, headers={"content-type": "image/png"}).status_code == 200


@pytest.mark.parametrize("top_k,status", [("0", 422), ("-3", 422), ("many", 400), ("1e3", 400), ("1_0", 400),
                                          ("\u0665", 400), ("99999999999", 200)])
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


def test_unidentifiable_image_message_names_no_heap_address(client):
    r = client.post("/v1/classify", content=b"GIF89a" + b"\x00" * 64, headers={"content-type": "image/png"})
    assert r.status_code == 400
    assert r.json()["error"] == "cannot decode image: not a JPEG, PNG or WebP image (declared image/png)"


def test_very_wide_image_is_refused_without_building_a_huge_intermediate(make_client):
    # 300000x1 pixels is within the default pixel limit; resizing its short side to the input size
    # used to build a 9.6M x 32 intermediate (1.5 GB of RSS and a 3 s stall).
    client = make_client()
    r = client.post("/v1/classify", content=_png_with_size(300_000, 1), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "times wider than high" in r.json()["error"]


def test_resizing_resamples_only_the_crop():
    import subprocess
    import sys

    from tests.helpers import REPO

    code = """
import resource
from PIL import Image
from models.transforms import resize_center_crop
image = Image.new("L", (300_000, 2), 128)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = resize_center_crop(image, 32)
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
assert out.size == (32, 32), out.size
print(round(grown_mb))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 20  # resizing all of it first (4.8M x 32 pixels) grew RSS by ~150 MB


def test_many_pixels_in_a_small_body_are_decoded_off_the_event_loop(make_client, monkeypatch):
    import io

    from PIL import Image

    from server.api import native

    client = make_client()
    calls = []
    original = native.run_in_threadpool

    async def recording(fn, *args, **kwargs):
        calls.append(fn)
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(native, "run_in_threadpool", recording)
    assert client.post("/v1/classify", content=GOOD, headers={"content-type": "image/png"}).status_code == 200
    assert calls == []  # 20x20: decoded inline
    buffer = io.BytesIO()
    Image.new("RGB", (2048, 2048)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < native.INLINE_DECODE_BYTES  # a small body ...
    r = client.post("/v1/classify", content=buffer.getvalue(), headers={"content-type": "image/png"})
    assert r.status_code == 200 and len(calls) == 1  # ... of 4 M pixels: decoded in a thread


def _multipart(images: list[bytes]) -> tuple[bytes, dict]:
    parts = b"".join(b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
                     b"Content-Type: image/png\r\n\r\n" + image + b"\r\n" for image in images)
    return parts + b"--b--\r\n", {"content-type": "multipart/form-data; boundary=b"}


def test_a_requests_images_together_are_bounded_before_any_pixel_is_decoded(make_client):
    # Each image is under the per-image limit; together they are over the per-request one.
    client = make_client(max_image_pixels=300 * 300, max_request_pixels=3 * 200 * 200)
    image = png_bytes(size=(200, 200))
    body, headers = _multipart([image] * 4)
    r = client.post("/v1/classify", content=body, headers=headers)
    assert r.status_code == 413 and "at most 120000 per request" in r.json()["error"]
    body, headers = _multipart([image] * 3)
    assert client.post("/v1/classify", content=body, headers=headers).status_code == 200
    assert client.registry.get_sample_value(
        "widthwise_requests_total", {"model": "tiny", "width": "none", "outcome": "bad_request"}) == 1


def test_pixels_decoding_across_requests_are_bounded_and_freed(make_client):
    client = make_client(max_decoding_pixels=50_000)
    budget = client.app.state.decode_budget
    budget.inflight = 40_000  # another request is decoding
    r = client.post("/v1/classify", content=png_bytes(size=(200, 200)), headers={"content-type": "image/png"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "being decoded" in r.json()["error"]
    budget.inflight = 0
    assert client.post("/v1/classify", content=png_bytes(size=(200, 200)),
                       headers={"content-type": "image/png"}).status_code == 200
    assert budget.inflight == 0  # released after decoding, and after a refusal


def test_decoding_stops_once_the_deadline_has_passed(make_client, monkeypatch):
    from server.api import native

    client = make_client()
    slow = native.decode_request_image

    def slow_decode(*args):  # every image takes 30 ms: the third starts past a 50 ms budget
        import time

        time.sleep(0.03)
        return slow(*args)

    monkeypatch.setattr(native, "decode_request_image", slow_decode)
    body, headers = _multipart([png_bytes(size=(20, 20), seed=i) for i in range(8)])
    r = client.post("/v1/classify", content=body, headers={**headers, "X-Latency-Budget-Ms": "50"})
    assert r.status_code == 504 and "decoded" in r.json()["error"]
