"""deploy/, Dockerfile and compose: validated with the real tools, and every PromQL metric name is one we export."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from server.metrics import Metrics
from server.runtime.nvml import DeviceSample
from tests.helpers import REPO

DEPLOY = REPO / "deploy"
IN_CI = os.environ.get("CI") == "true"
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def tool(name: str) -> str:
    """Path of a CLI the tests need; in CI a missing tool is a failure, elsewhere a skip."""
    candidates = [Path(sys.executable).parent / name, shutil.which(name)]
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    if IN_CI:
        pytest.fail(f"{name} is not installed; .ci/run must install it")
    pytest.skip(f"{name} not installed (install Debian's prometheus / docker-compose, or pip install -e '.[dev]')")


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_promtool_checks_config_and_rules():
    promtool = tool("promtool")
    assert run(promtool, "check", "config", "deploy/prometheus/prometheus.yml").returncode == 0
    result = run(promtool, "check", "rules", *map(str, sorted((DEPLOY / "prometheus/rules").glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests_pass():
    result = run(tool("promtool"), "test", "rules", "deploy/prometheus/tests/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def exported_registry() -> CollectorRegistry:
    """Every series a server exports, the GPU gauges of a CUDA server included."""
    registry = CollectorRegistry()
    Metrics(registry, "m").watch_device("cuda:0", lambda: DeviceSample(0.5, 1))
    return registry


def exported_sample_names() -> set[str]:
    registry = exported_registry()
    names = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def recording_rule_names() -> set[str]:
    doc = yaml.safe_load((DEPLOY / "prometheus/rules/recording.yml").read_text())
    return {rule["record"] for group in doc["groups"] for rule in group["rules"]}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, keywords and labels removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        after = expr[match.end():].lstrip()
        if after.startswith("(") or word.lower() in PROMQL_KEYWORDS or re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    return names


def dashboard_panels(dashboard: dict) -> list[dict]:
    """The graph panels, those inside rows included."""
    return [p for top in dashboard["panels"] for p in ([top] if top["type"] != "row" else top["panels"])]


def all_promql() -> list[tuple[str, str]]:
    exprs = []
    for path in sorted((DEPLOY / "prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            exprs += [(f"{path.name}:{r.get('record') or r.get('alert')}", r["expr"]) for r in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/widthwise.json").read_text())
    for panel in dashboard_panels(dashboard):
        exprs += [(f"dashboard:{panel['title']}", t["expr"]) for t in panel["targets"]]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append((f"variable:{var['name']}", re.sub(r"label_values\((\w+),.*\)", r"\1", var["query"])))
    adapter = yaml.safe_load((DEPLOY / "k8s/prometheus-adapter.yaml").read_text())
    for rule in yaml.safe_load(adapter["data"]["config.yaml"])["rules"]:
        exprs.append((f"adapter:{rule['name']['as']}", rule["metricsQuery"].replace("<<.GroupBy>>", "pod")))
    return exprs


def test_metric_name_extraction():
    expr = 'sum by (model, width) (rate(foo_total{outcome=~"ok|x"}[5m])) / on (model) group_left bar:baz > 0.5 and up'
    assert metric_names(expr) == {"foo_total", "bar:baz", "up"}


def test_every_promql_metric_is_exported_or_recorded():
    known = exported_sample_names() | recording_rule_names() | {"up"}
    exprs = all_promql()
    assert len(exprs) > 25
    for where, expr in exprs:
        unknown = metric_names(expr) - known
        assert not unknown, f"{where} uses {unknown}"


TARGET_LABELS = {"instance", "job"}  # added by every scrape


def exported_label_names() -> dict[str, set[str]]:
    """Sample name -> the labels its series carry when scraped."""
    registry = exported_registry()
    labels = {}
    for collector in set(registry._collector_to_names):
        # a metric's own label names; a custom collector's from the families it describes
        own = {name: collector._labelnames for name in registry._collector_to_names[collector]} \
            if hasattr(collector, "_labelnames") else {f.name: f._labelnames for f in collector.describe()}
        for name, label_names in own.items():
            labels[name] = set(label_names) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
    return labels


def output_labels(expr: str) -> set[str]:
    """Labels of the series a (dashboard-style) PromQL expression returns: its outermost aggregation's
    ``by`` list, a recording rule's own output labels, or a plain metric's labels."""
    expr = expr.strip()
    quantile = re.match(r"histogram_quantile\(\s*[\d.]+\s*,\s*(.*)\)$", expr, re.S)
    if quantile:
        return output_labels(quantile.group(1)) - {"le"}
    aggregation = re.match(r"(sum|max|min|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(", expr)
    if aggregation:
        return {label.strip() for label in (aggregation.group(2) or "").split(",") if label.strip()}
    name = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", expr).group(0)
    rules = {
        r["record"]: r["expr"]
        for g in yaml.safe_load((DEPLOY / "prometheus/rules/recording.yml").read_text())["groups"]
        for r in g["rules"]
    }
    return output_labels(rules[name]) if name in rules else exported_label_names()[name]


def test_output_labels_follow_the_aggregation():
    assert output_labels('histogram_quantile(0.5, sum by (width, le) (rate(x_bucket{a="b"}[1m])))') == {"width"}
    assert output_labels("sum(widthwise_queue_depth)") == set()
    assert output_labels("widthwise:served_accuracy:ratio_rate5m{model=~\"$model\"}") == {"model"}
    assert output_labels("widthwise_gpu_utilization_ratio") == {"device", "instance", "job"}


def test_every_legend_names_a_label_its_query_returns():
    dashboard = json.loads((DEPLOY / "grafana/dashboards/widthwise.json").read_text())
    checked = 0
    for panel in dashboard_panels(dashboard):
        for target in panel["targets"]:
            assert "{" not in re.sub(r"\{\{\s*\w+\s*\}\}", "", target["legendFormat"]), (
                f"{panel['title']}: legend {target['legendFormat']!r} has a malformed template")
            named = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]))
            missing = named - output_labels(target["expr"])
            assert not missing, f"{panel['title']}: legend {target['legendFormat']!r} names {missing}, not returned"
            checked += len(named)
    assert checked >= 8


def test_dashboard_has_the_required_panels_and_matches_its_generator():
    sys.path.insert(0, str(DEPLOY / "grafana"))
    try:
        import make_dashboard
    finally:
        sys.path.pop(0)
    assert (DEPLOY / "grafana/dashboards/widthwise.json").read_text() == make_dashboard.render()
    panels = make_dashboard.build()["panels"]
    titles = " | ".join(p["title"] for top in panels for p in [top, *top.get("panels", [])]).lower()
    for needed in (
        "width mix",
        "p50/p95/p99",
        "queue wait",
        "budget vs served",
        "deadline",
        "batch size",
        "queue depth",
        "gpu utilization",
        "gpu memory",
    ):
        assert needed in titles, needed


def test_grafana_provisioning_points_at_the_dashboard_folder():
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/widthwise.yml").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert any(m.startswith("./deploy/grafana/dashboards:" + path) for m in mounts)
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_dockerfile_is_clean_under_hadolint_and_has_the_essentials():
    result = run(tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "Dockerfile").read_text()
    for needed in ("HEALTHCHECK", "/healthz", "EXPOSE 8000", "USER 10001", '"--host", "0.0.0.0"',
                   "ARG FLAVOUR=cpu", "requirements-${FLAVOUR}.txt"):
        assert needed in text, needed


def _pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file, following ``-r`` includes."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("-r "):
            pins.update(_pins(path.parent / line[3:].strip()))
        elif line and not line.startswith(("#", "-")):
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_each_image_flavour_pins_every_runtime_dependency():
    """Every dependency in pyproject is pinned in each image, except what a flavour does not use."""
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]).lower() for d in declared}
    cpu, gpu = (_pins(DEPLOY / f"docker/requirements-{flavour}.txt") for flavour in ("cpu", "gpu"))
    assert names <= set(cpu), names - set(cpu)
    # The GPU image takes torch from its base image and runs the torch backend (no ONNX Runtime).
    assert names - {"torch", "onnxruntime", "onnx"} <= set(gpu), names - set(gpu)
    assert cpu["torch"].endswith("+cpu") and "nvidia-ml-py" in gpu


def test_compose_config_validates_with_and_without_the_gpu_override():
    compose = tool("docker-compose")
    assert run(compose, "-f", "docker-compose.yml", "config", "-q").returncode == 0
    result = run(compose, "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config")
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)
    devices = merged["services"]["widthwise"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    build = merged["services"]["widthwise"]["build"]["args"]
    assert build["FLAVOUR"] == "gpu" and "cuda" in build["BASE"]
    assert (DEPLOY / f"docker/requirements-{build['FLAVOUR']}.txt").exists()
    cpu = yaml.safe_load(run(compose, "-f", "docker-compose.yml", "config").stdout)["services"]["widthwise"]
    assert cpu["image"] == "widthwise:cpu" and "args" not in cpu["build"]  # the Dockerfile's defaults: CPU
    assert set(merged["services"]) == {"widthwise", "prometheus", "grafana"}


def test_kubernetes_manifests_validate():
    manifests = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    # the Prometheus Operator's PodMonitor and PrometheusRule are CRDs without a bundled schema
    core = [m for m in manifests if "podmonitor" not in m and "prometheusrule" not in m]
    result = run(tool("kubernetes-validate"), "--strict", *core)
    assert result.returncode == 0, result.stdout + result.stderr
    deployment = yaml.safe_load((DEPLOY / "k8s/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["terminationGracePeriodSeconds"] > 30 + 5  # drain + preStop
    monitor = yaml.safe_load((DEPLOY / "k8s/podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor" and monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_the_prometheus_rule_for_the_operator_holds_the_rule_files_groups():
    rule = yaml.safe_load((DEPLOY / "k8s/prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = [g for name in ("recording.yml", "alerts.yml")
              for g in yaml.safe_load((DEPLOY / "prometheus/rules" / name).read_text())["groups"]]
    assert rule["spec"]["groups"] == groups
    for script in ("prometheus/make_prometheusrule.py", "grafana/make_dashboard.py"):  # generated files are current
        out = run(sys.executable, str(DEPLOY / script), "--check")
        assert out.returncode == 0, out.stdout + out.stderr


def test_deploy_files_run_the_documented_default_policy():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert "WIDTHWISE_POLICY" not in compose["services"]["widthwise"].get("environment", {})
    env = yaml.safe_load((DEPLOY / "k8s/deployment.yaml").read_text())["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    assert "WIDTHWISE_POLICY" not in {e["name"] for e in env}
