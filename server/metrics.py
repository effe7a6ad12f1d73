"""Prometheus metrics (names and labels are a contract: see docs/design.md).

The engine and the handlers emit frozen stats records; :class:`Metrics` turns
them into metrics in its ``record_*`` methods, and nothing outside this module
touches a Prometheus object. The registry is passed in, so every test uses a
fresh one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from policies import Reason
from server.statistics import ModelStatistics

__all__ = ["Metrics", "Outcome", "RequestRecord", "BatchRecord", "QueueRecord", "ModelRecord", "width_label",
           "width_position"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Outcome(enum.StrEnum):
    """What became of a request: the ``outcome`` label (fixed set)."""

    OK = "ok"
    DEADLINE_MISSED = "deadline_missed"
    REJECTED = "rejected"
    BAD_REQUEST = "bad_request"
    ERROR = "error"


def width_label(width: float | None) -> str:
    """How a width is spelled everywhere (labels, headers, logs): ``0.5`` -> ``"0.5"``, ``1.0`` -> ``"1.0"``;
    ``None`` (never chosen) -> ``"none"``."""
    return "none" if width is None else repr(float(width))


@dataclass(frozen=True)
class RequestRecord:
    """One answered request; ``width`` is None when none served it."""

    outcome: Outcome
    width: float | None = None
    duration_s: float | None = None
    accuracy: float | None = None  # the served width's expected top-1, when known
    # Phases of a served request (Triton's statistics): receiving and decoding, queue, batch.
    input_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0

    @property
    def served(self) -> bool:
        return self.outcome in (Outcome.OK, Outcome.DEADLINE_MISSED)


@dataclass(frozen=True)
class BatchRecord:
    """One executed batch and how long each of its requests had queued."""

    width: float
    samples: int
    seconds: float
    reason: Reason
    queue_waits_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class QueueRecord:
    """The queue now: queued requests and admitted ones not answered yet."""

    depth: int
    inflight: int | None = None


@dataclass(frozen=True)
class ModelRecord:
    """What is served: published once, when the model is ready."""

    arch: str
    widths: tuple[float, ...]
    device: str
    queue_limit: int


class Metrics:
    def __init__(self, registry: CollectorRegistry, model: str, accuracy_known: bool = True) -> None:
        """``accuracy_known=False`` (a checkpoint without expected accuracy per width): no
        ``widthwise_expected_correct_total`` series, so the served-accuracy ratio has no data
        instead of reading 0%."""
        self.model = model
        self.requests = Counter(
            "widthwise_requests",
            "Requests by served width and outcome.",
            ["model", "width", "outcome"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "widthwise_request_duration_seconds", "End-to-end request latency.", ["model", "width"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_wait = Histogram(
            "widthwise_queue_wait_seconds",
            "Time from enqueue to batch start.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "widthwise_inference_duration_seconds", "Time to run one batch.", ["model", "width"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "widthwise_batch_size",
            "Samples per executed batch.",
            ["model", "width"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.latency_budget = Histogram(
            "widthwise_latency_budget_seconds", "Latency budgets requested by clients.", ["model"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.width_selections = Counter(
            "widthwise_width_selections", "Batches by chosen width and policy reason.", ["model", "width", "reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "widthwise_queue_depth", "Requests waiting in the queue.", ["model"], registry=registry
        )
        self.inflight = Gauge(
            "widthwise_inflight_requests", "Requests admitted and not yet answered.", ["model"], registry=registry
        )
        self.expected_correct = Counter(
            "widthwise_expected_correct",
            "Sum over served requests of the served width's expected top-1 accuracy.",
            ["model"], registry=registry,
        )
        self.model_info = Gauge(
            "widthwise_model_info",
            "Static model information (value 1).",
            ["model", "arch", "widths", "device"],
            registry=registry,
        )
        self.width_info = Gauge(
            "widthwise_width_info",
            "Declared widths (value 1); position is narrowest, intermediate or widest, for joins in alert rules.",
            ["model", "width", "position"], registry=registry,
        )
        self.keep_warm_runs = Counter(
            "widthwise_keep_warm_runs", "Idle-time inferences run to keep the model warm (--keep-warm-ms).", ["model"],
            registry=registry,
        )
        self.queue_limit = Gauge(
            "widthwise_queue_limit", "Configured queue capacity (requests).", ["model"], registry=registry
        )
        # Why deadlines slip on a core shared by HTTP and the model: both feed the engine's planning.
        self.event_loop_lag = Gauge(
            "widthwise_event_loop_lag_seconds",
            "How late the event loop runs a timer (90th percentile over about a second): the wait a request's first "
            "bytes also have before the server reads them; kept in reserve before every deadline.",
            ["model"], registry=registry,
        )
        self.request_cpu = Gauge(
            "widthwise_request_cpu_seconds",
            "The server's own CPU per request (HTTP, decoding, scheduling, replies): what the policies charge "
            "against the model's cores when the two share them.",
            ["model"], registry=registry,
        )
        self.device_speed = Gauge(
            "widthwise_device_speed_ratio",
            "How much longer batches recently ran than the start-up latency profile measured (1.3: 30% slower), "
            "learnt across all widths; every width's planned service time is scaled by it.",
            ["model"], registry=registry,
        )
        self.admission_audits = Counter(
            "widthwise_admission_audits",
            "Requests the deadline checks would have refused, served anyway to time them (--admission-audit), "
            "by whether the answer was in time: on_time / all is the share of such refusals that were needless.",
            ["model", "verdict"], registry=registry,
        )
        self._registry = registry

        # Per-request series of this model, bound once: labels() costs a lock and a lookup per call.
        self._queue_depth = self.queue_depth.labels(model)
        self._inflight = self.inflight.labels(model)
        self._queue_wait = self.queue_wait.labels(model)
        self._latency_budget = self.latency_budget.labels(model)
        self._expected_correct = self.expected_correct.labels(model) if accuracy_known else None
        self._children: dict[tuple, object] = {}
        # Refusals and misses at 0 from the start: a miss ratio (and the SLO alerts on it) reads 0, not
        # "no data", on a server that has not missed yet.
        for outcome in (Outcome.DEADLINE_MISSED, Outcome.REJECTED, Outcome.BAD_REQUEST, Outcome.ERROR):
            self._child(self.requests, width_label(None), outcome.value)
        self.statistics = ModelStatistics()  # Triton's statistics extension, from the same records

    def _child(self, metric, *labels: str):
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.model, *labels)
        return child

    def record_request(self, r: RequestRecord) -> None:
        label = width_label(r.width)
        self._child(self.requests, label, r.outcome.value).inc()
        if r.duration_s is not None and r.served:  # a refusal's time is not a latency
            self._child(self.request_duration, label).observe(r.duration_s)
        if r.accuracy is not None and r.outcome is Outcome.OK and self._expected_correct is not None:
            # matches the ok-only denominator of the accuracy ratio
            self._expected_correct.inc(r.accuracy)
        if r.served and r.width is not None:
            self.statistics.request_served(r.width, r.duration_s or 0.0, r.input_s, r.queue_s, r.inference_s)
        else:
            self.statistics.request_failed(r.duration_s or 0.0)

    def record_budget(self, budget_s: float) -> None:
        """A latency budget a client asked for (at admission)."""
        self._latency_budget.observe(budget_s)

    def record_batch(self, b: BatchRecord) -> None:
        label = width_label(b.width)
        self._child(self.inference_duration, label).observe(b.seconds)
        self._child(self.batch_size, label).observe(b.samples)
        self._child(self.width_selections, label, Reason(b.reason).value).inc()
        for wait in b.queue_waits_s:
            self._queue_wait.observe(wait)
        self.statistics.batch_executed(b.width, b.samples, b.seconds, Reason(b.reason).value, b.queue_waits_s)

    def record_audit(self, on_time: bool) -> None:
        """An audited would-be refusal (``--admission-audit``) answered, in time or not."""
        self._child(self.admission_audits, "on_time" if on_time else "late").inc()

    def record_keep_warm(self) -> None:
        self._child(self.keep_warm_runs).inc()

    def record_queue(self, q: QueueRecord) -> None:
        self._queue_depth.set(q.depth)
        if q.inflight is not None:
            self._inflight.set(q.inflight)

    def record_event_loop(self, lag_s: float, request_cpu_s: float | None, device_speed: float | None = None) -> None:
        self.event_loop_lag.labels(self.model).set(lag_s)
        if request_cpu_s is not None:
            self.request_cpu.labels(self.model).set(request_cpu_s)
        if device_speed is not None:
            self.device_speed.labels(self.model).set(device_speed)

    def record_model(self, m: ModelRecord) -> None:
        for width in m.widths:
            self.width_info.labels(self.model, width_label(width), width_position(width, m.widths)).set(1)
        self.queue_limit.labels(self.model).set(m.queue_limit)
        self.model_info.labels(self.model, m.arch, ",".join(width_label(w) for w in m.widths), m.device).set(1)

    def watch_device(self, device: str, sample: Callable[[], Any]) -> None:
        """Export ``device``'s utilization and memory, read by ``sample()`` (NVML's ``DeviceSample``) when
        Prometheus scrapes: no thread polls the GPU between scrapes."""
        self._registry.register(_DeviceGauges(device, sample))


class _DeviceGauges(Collector):
    """``widthwise_gpu_utilization_ratio`` and ``widthwise_gpu_memory_used_bytes`` of one device, read at
    scrape time; nothing is exported while the reading is unavailable (NVML missing or failing)."""

    def __init__(self, device: str, sample: Callable[[], Any]) -> None:
        self.device = device
        self.sample = sample

    def describe(self) -> list[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> list[GaugeMetricFamily]:
        reading = self.sample()
        return self._families(reading.utilization, reading.memory_used_bytes)

    def _families(self, utilization: float | None = None, memory: int | None = None) -> list[GaugeMetricFamily]:
        ratio = GaugeMetricFamily("widthwise_gpu_utilization_ratio", "GPU utilization (0-1) from NVML.",
                                  labels=["device"])
        used = GaugeMetricFamily("widthwise_gpu_memory_used_bytes", "GPU memory in use from NVML.", labels=["device"])
        if utilization is not None:
            ratio.add_metric([self.device], utilization)
            used.add_metric([self.device], memory or 0)
        return [ratio, used]


def width_position(width: float, widths: tuple[float, ...]) -> str:
    if width == widths[0]:
        return "narrowest"
    return "widest" if width == widths[-1] else "intermediate"
