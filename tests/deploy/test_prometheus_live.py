"""A real Prometheus scrapes two live widthwise replicas on 127.0.0.1 and evaluates our rules and dashboard."""

import json
import re
import subprocess
import time

import httpx2
import pytest
import yaml

from server.testing import free_port
from tests.deploy.test_artifacts import tool
from tests.helpers import REPO, png_bytes


def query(base: str, expr: str) -> list[dict]:
    r = httpx2.get(base + "/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


@pytest.fixture
def prometheus(tmp_path, live_server):
    binary = tool("prometheus")
    servers = [live_server(), live_server()]  # two replicas: rules must not match one series per instance
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for path in (REPO / "deploy/prometheus/rules").glob("*.yml"):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            group["interval"] = "1s"  # evaluate quickly in the test
        (rules_dir / path.name).write_text(yaml.safe_dump(doc))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_dir / "*.yml")],
        "scrape_configs": [
            {
                "job_name": "widthwise",
                "static_configs": [{"targets": [f"127.0.0.1:{server.port}" for server in servers]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(base + "/-/ready", timeout=1).status_code == 200:
                break
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        message = proc.stderr.read()
        proc.stderr.close()
        pytest.fail(f"prometheus did not start: {message}")
    yield base, servers
    proc.terminate()
    proc.wait(timeout=10)
    proc.stderr.close()


def test_prometheus_sees_traffic_at_two_widths_and_records_rules(prometheus):
    base, servers = prometheus
    data = png_bytes()
    deadline = time.monotonic() + 45
    by_width: dict[str, float] = {}
    recorded: list[dict] = []
    while time.monotonic() < deadline:
        for server in servers:
            for width in ("0.25", "1"):
                r = httpx2.post(server.url + "/v1/classify", content=data,
                                headers={"content-type": "image/png", "X-Width": width})
                assert r.status_code == 200
        result = query(base, "sum by (width) (increase(widthwise_requests_total[1m]))")
        by_width = {s["metric"]["width"]: float(s["value"][1]) for s in result}
        recorded = query(base, 'widthwise:requests:rate1m{outcome="ok"}')
        share = query(base, "widthwise:narrowest_share:ratio_rate5m")
        # a width's series counts in a rate from its second scrape on: until then the share reads 1.0
        settled = share and 0.3 < float(share[0]["value"][1]) < 0.7
        if by_width.get("0.25", 0) > 0 and by_width.get("1.0", 0) > 0 and len(recorded) >= 2 and settled:
            break
        time.sleep(0.5)
    assert by_width.get("0.25", 0) > 0 and by_width.get("1.0", 0) > 0, by_width
    assert {s["metric"]["width"] for s in recorded} >= {"0.25", "1.0"}
    assert [s["value"][1] for s in query(base, 'up{job="widthwise"}')] == ["1", "1"]
    share = query(base, "widthwise:narrowest_share:ratio_rate5m")
    assert len(share) == 1 and 0.3 < float(share[0]["value"][1]) < 0.7  # half the traffic of both ran at 0.25
    # Every dashboard query evaluates over the two replicas (no matching errors) and its legend's labels
    # exist; outside the collapsed GPU row every one has data from these default CPU servers.
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/widthwise.json").read_text())
    gpu_row = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [p["title"] for p in gpu_row] == ["GPU (servers with --device cuda)"] and gpu_row[0]["collapsed"]
    shown = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in shown + gpu_row[0]["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$model", ".*").replace("$__rate_interval", "1m")
            samples = query(base, expr)
            assert samples or panel not in shown, (panel["title"], expr)
            for sample in samples:
                for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]):
                    assert label in sample["metric"], (panel["title"], target["legendFormat"], sample["metric"])
