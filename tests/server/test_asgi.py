"""``server.asgi.create_app``: the application for other ASGI servers, configured from the environment."""

from fastapi.testclient import TestClient

from tests.helpers import png_bytes, wait_ready


def test_create_app_reads_the_environment_and_serves(tiny_checkpoint, monkeypatch):
    from server.asgi import create_app

    monkeypatch.setenv("WIDTHWISE_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv("WIDTHWISE_MODEL_NAME", "from-env")
    monkeypatch.setenv("WIDTHWISE_POLICY", "fixed:0.5")
    monkeypatch.setenv("WIDTHWISE_PROFILE_REPEATS", "3")
    with TestClient(create_app()) as client:
        wait_ready(client)
        r = client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.json()["model"] == "from-env" and r.json()["width"] == 0.5
