"""Prometheus metrics (names and labels are a contract: see DESIGN.md).

The engine emits plain records; this recorder turns them into metrics. The
registry is passed in, so every test uses a fresh one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "OUTCOMES", "width_label", "width_position"]

OUTCOMES = ("ok", "deadline_missed", "rejected", "bad_request", "error")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def width_label(width: float | None) -> str:
    """``0.5`` -> ``"0.5"``, ``1.0`` -> ``"1.0"``; ``None`` (never chosen) -> ``"none"``."""
    return "none" if width is None else repr(float(width))


class Metrics:
    def __init__(self, registry: CollectorRegistry, model: str, accuracy_known: bool = True) -> None:
        """``accuracy_known=False`` (a checkpoint without expected accuracy per width): no
        ``widthwise_expected_correct_total`` series, so the served-accuracy ratio has no data
        instead of reading 0%."""
        self.model = model
        self.requests = Counter(
            "widthwise_requests", "Requests by served width and outcome.", ["model", "width", "outcome"], registry=registry
        )
        self.request_duration = Histogram(
            "widthwise_request_duration_seconds", "End-to-end request latency.", ["model", "width"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_wait = Histogram(
            "widthwise_queue_wait_seconds", "Time from enqueue to batch start.", ["model"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.inference_duration = Histogram(
            "widthwise_inference_duration_seconds", "Time to run one batch.", ["model", "width"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "widthwise_batch_size", "Samples per executed batch.", ["model", "width"], buckets=BATCH_BUCKETS, registry=registry
        )
        self.latency_budget = Histogram(
            "widthwise_latency_budget_seconds", "Latency budgets requested by clients.", ["model"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.width_selections = Counter(
            "widthwise_width_selections", "Batches by chosen width and policy reason.", ["model", "width", "reason"],
            registry=registry,
        )
        self.queue_depth = Gauge("widthwise_queue_depth", "Requests waiting in the queue.", ["model"], registry=registry)
        self.inflight = Gauge("widthwise_inflight_requests", "Requests admitted and not yet answered.", ["model"], registry=registry)
        self.expected_correct = Counter(
            "widthwise_expected_correct",
            "Sum over served requests of the served width's expected top-1 accuracy.",
            ["model"], registry=registry,
        )
        self.model_info = Gauge(
            "widthwise_model_info", "Static model information (value 1).", ["model", "arch", "widths", "device"], registry=registry
        )
        self.width_info = Gauge(
            "widthwise_width_info",
            "Declared widths (value 1); position is narrowest, intermediate or widest, for joins in alert rules.",
            ["model", "width", "position"], registry=registry,
        )
        self.queue_limit = Gauge("widthwise_queue_limit", "Configured queue capacity (requests).", ["model"], registry=registry)
        self.gpu_utilization = Gauge(
            "widthwise_gpu_utilization_ratio", "GPU utilization (0-1) from NVML.", ["device"], registry=registry
        )
        self.gpu_memory = Gauge("widthwise_gpu_memory_used_bytes", "GPU memory in use from NVML.", ["device"], registry=registry)

        # Per-request series of this model, bound once: labels() costs a lock and a lookup per call.
        self.queue_depth_now = self.queue_depth.labels(model)
        self.inflight_now = self.inflight.labels(model)
        self.queue_wait_of = self.queue_wait.labels(model)
        self.latency_budget_of = self.latency_budget.labels(model)
        self._expected_correct = self.expected_correct.labels(model) if accuracy_known else None
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.model, *labels)
        return child

    def request(self, width: float | None, outcome: str, duration_s: float | None = None, accuracy: float | None = None) -> None:
        label = width_label(width)
        self._child(self.requests, label, outcome).inc()
        if duration_s is not None:
            self._child(self.request_duration, label).observe(duration_s)
        if accuracy is not None and outcome == "ok" and self._expected_correct is not None:
            # matches the ok-only denominator of the accuracy ratio
            self._expected_correct.inc(accuracy)

    def batch(self, width: float, samples: int, seconds: float, reason: str) -> None:
        label = width_label(width)
        self._child(self.inference_duration, label).observe(seconds)
        self._child(self.batch_size, label).observe(samples)
        self._child(self.width_selections, label, reason).inc()


def width_position(width: float, widths: tuple[float, ...]) -> str:
    if width == widths[0]:
        return "narrowest"
    return "widest" if width == widths[-1] else "intermediate"
