"""Writes deploy/grafana/dashboards/widthwise.json (run after editing; a test checks they agree).

    python deploy/grafana/make_dashboard.py [--out PATH] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "widthwise.json"
M = 'model=~"$model"'
RATE = "$__rate_interval"


def q(expr: str, legend: str) -> dict:
    return {"expr": expr, "legendFormat": legend, "datasource": {"type": "prometheus", "uid": "${datasource}"}}


def panel(pid: int, title: str, targets: list[dict], x: int, y: int, unit: str = "short", stacked: bool = False,
          description: str = "", w: int = 12, h: int = 8) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 60 if stacked else 10, "showPoints": "never"}
    if stacked:
        custom["stacking"] = {"mode": "percent", "group": "A"}
    return {
        "id": pid, "type": "timeseries", "title": title, "description": description,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
    }


def quantiles(metric: str, by: str, legend: str) -> list[dict]:
    return [
        # replace, not str.format: format would turn the legend's {{width}} into {width}
        q(
            f"histogram_quantile({p}, sum by ({by}le) (rate({metric}_bucket{{{M}}}[{RATE}])))",
            legend.replace("{p}", name),
        )
        for p, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
    ]


def build() -> dict:
    served = f'outcome=~"ok|deadline_missed",{M}'
    panels = [
        panel(
            1,
            "Width mix (share of served requests)",
            [q(f"sum by (width) (rate(widthwise_requests_total{{{served}}}[{RATE}]))", "width {{width}}")],
            0,
            0,
            "percentunit",
            stacked=True,
            description="Which widths answered requests. Narrow widths growing = load is eating accuracy.",
        ),
        panel(
            2,
            "Served accuracy vs deadline misses",
            [
                q(f"widthwise:served_accuracy:ratio_rate5m{{{M}}}", "expected top-1"),
                q(f"widthwise:deadline_miss:ratio_rate5m{{{M}}}", "deadline-miss ratio"),
            ],
            12,
            0,
            "percentunit",
            description="The trade adaptive width makes: accuracy served right now and the share of requests late or "
                        "refused.",
        ),
        panel(
            3,
            "End-to-end latency per width (p50/p95/p99)",
            quantiles("widthwise_request_duration_seconds", "width, ", "{p} width {{width}}"),
            0,
            8,
            "s",
        ),
        panel(
            4,
            "Latency budget vs served latency (median)",
            [
                q(
                    f"histogram_quantile(0.5, sum by (le) "
                    f"(rate(widthwise_latency_budget_seconds_bucket{{{M}}}[{RATE}])))",
                    "budget p50",
                ),
                q(
                    f"histogram_quantile(0.5, sum by (le) "
                    f"(rate(widthwise_request_duration_seconds_bucket{{{M}}}[{RATE}])))",
                    "served p50",
                ),
                q(
                    f"histogram_quantile(0.99, sum by (le) "
                    f"(rate(widthwise_request_duration_seconds_bucket{{{M}}}[{RATE}])))",
                    "served p99",
                ),
            ],
            12,
            8,
            "s",
        ),
        panel(5, "Queue wait (p50/p95/p99)", quantiles("widthwise_queue_wait_seconds", "", "{p}"), 0, 16, "s"),
        panel(
            6,
            "Queue depth and in-flight requests",
            [
                q(f"sum(widthwise_queue_depth{{{M}}})", "queued"),
                q(f"sum(widthwise_inflight_requests{{{M}}})", "in flight"),
                q(f"max(widthwise_queue_limit{{{M}}})", "queue limit"),
            ],
            12,
            16,
        ),
        panel(
            7,
            "Mean batch size per width",
            [
                q(
                    f"sum by (width) (rate(widthwise_batch_size_sum{{{M}}}[{RATE}])) / sum by (width) "
                    f"(rate(widthwise_batch_size_count{{{M}}}[{RATE}]))",
                    "width {{width}}",
                )
            ],
            0,
            24,
        ),
        panel(
            8,
            "Width selections by reason",
            [q(f"sum by (reason) (rate(widthwise_width_selections_total{{{M}}}[{RATE}]))", "{{reason}}")],
            12,
            24,
            "ops",
            description="budget: the budget allowed it; load: narrowed by the queue; pinned; fallback; feedback.",
        ),
        panel(
            9,
            "Requests by outcome",
            [q(f"sum by (outcome) (rate(widthwise_requests_total{{{M}}}[{RATE}]))", "{{outcome}}")],
            0,
            32,
            "reqps",
        ),
        panel(
            10,
            "Inference time per batch (p50/p99)",
            quantiles("widthwise_inference_duration_seconds", "width, ", "{p} width {{width}}")[::2],
            12,
            32,
            "s",
        ),
        # On a CPU host whose cores HTTP and the model share, these explain misses the queue does not.
        panel(
            13,
            "Event loop lag (p90) and HTTP CPU per request",
            [
                q(f"max by (model) (widthwise_event_loop_lag_seconds{{{M}}})", "loop lag {{model}}"),
                q(f"max by (model) (widthwise_request_cpu_seconds{{{M}}})", "request CPU {{model}}"),
            ],
            0,
            40,
            "s",
        ),
        panel(
            14,
            "Device speed over the start-up profile",
            [
                q(f"max by (model) (widthwise_device_speed_ratio{{{M}}})", "{{model}}"),
            ],
            12,
            40,
            "none",
            description="1.3: batches run 30% slower than measured at start-up (a busy or throttled "
            "host); every width's planned time is scaled by it.",
        ),
        # NVML's series exist only on a server with --device cuda: a collapsed row keeps a CPU fleet's
        # dashboard free of empty panels.
        {
            "id": 15, "type": "row", "title": "GPU (servers with --device cuda)", "collapsed": True,
            "gridPos": {"x": 0, "y": 48, "w": 24, "h": 1},
            "panels": [
                panel(11, "GPU utilization", [q("widthwise_gpu_utilization_ratio", "{{device}}")], 0, 49,
                      "percentunit"),
                panel(12, "GPU memory used", [q("widthwise_gpu_memory_used_bytes", "{{device}}")], 12, 49, "bytes"),
            ],
        },
    ]
    return {
        "uid": "widthwise",
        "title": "widthwise",
        "tags": ["widthwise", "inference"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                {
                    "name": "model",
                    "type": "query",
                    "label": "Model",
                    "multi": True,
                    "includeAll": True,
                    "refresh": 2,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": "label_values(widthwise_model_info, model)",
                    "definition": "label_values(widthwise_model_info, model)",
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the dashboard")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file differs")
    args = parser.parse_args(argv)
    if args.check:
        same = args.out.is_file() and args.out.read_text() == render()
        print(f"{args.out} is {'up to date' if same else 'out of date'}")
        return 0 if same else 1
    args.out.write_text(render())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
