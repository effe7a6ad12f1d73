"""Triton's statistics extension (``/v2/models/{name}/stats``, gRPC ``ModelStatistics``).

Fed by :class:`~server.metrics.Metrics` from the same request and batch records as the
Prometheus metrics, so the two always agree: ``success.count`` is the requests counted ``ok`` or
``deadline_missed``, ``fail.count`` the others, ``queue`` the queue waits of
``widthwise_queue_wait_seconds``, ``execution_count``/``inference_count`` the count and sum of
``widthwise_batch_size``. Durations are in nanoseconds as Triton reports them.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass

__all__ = ["Duration", "ModelStatistics"]


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, round(seconds * 1e9))

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _WidthStats:
    success: int = 0
    inference_count: int = 0
    execution_count: int = 0


class ModelStatistics:
    """Running totals for one model; updated from the worker thread and the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self._batches: dict[int, Duration] = defaultdict(Duration)  # compute_infer per batch size
        self._widths: dict[float, _WidthStats] = defaultdict(_WidthStats)
        self._reasons: dict[tuple[float, str], int] = defaultdict(int)

    def request_served(self, width: float, total_s: float, input_s: float, queue_s: float, inference_s: float) -> None:
        """A request answered with its logits: end to end, and its phases (input: receiving and decoding;
        output: everything after the batch, i.e. the rest of ``total_s``)."""
        output_s = max(0.0, total_s - input_s - queue_s - inference_s)
        with self._lock:
            self.success.add(total_s)
            self.compute_input.add(input_s)
            self.compute_infer.add(inference_s)
            self.compute_output.add(output_s)
            self._widths[width].success += 1

    def request_failed(self, total_s: float) -> None:
        with self._lock:
            self.fail.add(total_s)

    def batch_executed(self, width: float, samples: int, seconds: float, reason: str,
                       queue_waits_s: tuple[float, ...]) -> None:
        with self._lock:
            self.execution_count += 1
            self.inference_count += samples
            self.last_inference_ms = int(time.time() * 1e3)
            self._batches[samples].add(seconds)
            for wait in queue_waits_s:
                self.queue.add(wait)
            stats = self._widths[width]
            stats.execution_count += 1
            stats.inference_count += samples
            self._reasons[(width, reason)] += 1

    def as_triton(self, name: str, version: str, widths: tuple[float, ...]) -> dict:
        """One ``model_stats`` entry in Triton's JSON schema, plus ``widths``: per served width, the
        requests answered, samples and batches executed and the batches by the policy's reason."""
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_dict(),
                    "fail": self.fail.as_dict(),
                    "queue": self.queue.as_dict(),
                    "compute_input": self.compute_input.as_dict(),
                    "compute_infer": self.compute_infer.as_dict(),
                    "compute_output": self.compute_output.as_dict(),
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {"batch_size": size, "compute_infer": duration.as_dict()}
                    for size, duration in sorted(self._batches.items())
                ],
                "widths": [
                    {
                        "width": width,
                        "success_count": self._widths[width].success,
                        "inference_count": self._widths[width].inference_count,
                        "execution_count": self._widths[width].execution_count,
                        "reasons": {reason: n for (w, reason), n in sorted(self._reasons.items()) if w == width},
                    }
                    for width in widths
                ],
            }
