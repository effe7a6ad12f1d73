"""The batch worker: one thread that takes batches from the scheduler, runs them and answers them.

A batch that raises fails only its own requests (500). Out of memory splits the batch and retries,
then steps down to a narrower width, before failing. A batch that hangs longer than the timeout is
answered 500 by the watchdog, which starts a fresh worker thread (server/watchdog.py). If the loop
itself dies (a bug, not a failed batch), nothing would answer the queue again: the queue is refused
and ``on_death`` is told, so the engine turns unready and the process exits.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from policies import LatencyProfile, Pending, Policy, Reason, RefusalReason, Refused, Scheduler
from server.engine.errors import InferenceFailed
from server.engine.handoff import answer_all
from server.engine.keep_warm import KeepWarm
from server.engine.watchdog import BatchWatchdog
from server.metrics import BatchRecord, Metrics, QueueRecord

__all__ = ["BatchWorker", "InferenceResult", "lower_thread_priority", "out_of_memory_errors"]

log = logging.getLogger("widthwise.engine")



def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """What a batch that does not fit raises: MemoryError, and torch's CUDA error once torch is loaded
    (the ONNX Runtime path never imports it, so nothing can raise it there)."""
    torch = sys.modules.get("torch")
    return (torch.cuda.OutOfMemoryError, MemoryError) if torch is not None else (MemoryError,)


@dataclass(frozen=True)
class InferenceResult:
    """What a served request gets back."""

    logits: np.ndarray  # float32 [samples, num_classes]
    width: float
    reason: Reason
    queue_s: float
    inference_s: float
    batch_samples: int
    audited: bool = False  # served although admission would have refused it (--admission-audit)


def lower_thread_priority(by: int) -> None:
    """Make the calling thread ``by`` nicer (Linux keeps a nice value per thread).

    When inference and the HTTP event loop share a core, whichever the kernel runs first delays the
    other. A request's first bytes (where its budget starts), its parsing and its answer are short
    and late ones cost deadlines outright; a batch absorbs the delay and the profile learns it.
    Pinned to one core at fixed rates, 3 alternating rounds with nice 5: late 200s 19 -> 9, attainment
    at ~1.6x load 0.82-0.84 -> 0.85-0.86; but at 2.3-2.7x 0.63 -> 0.58, where the loop's priority
    goes to requests it refuses (BENCHMARKS.md, "Worker priority").
    Raising one's own nice needs no privilege."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + by)
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox that refuses it
        log.info("could not lower the inference thread's priority: %s", exc)


class BatchWorker:
    """Serves the scheduler's batches on ``runtime`` until the scheduler closes and drains."""

    def __init__(
        self, scheduler: Scheduler, runtime, widths: tuple[float, ...], profile: LatencyProfile, policy: Policy,
        metrics: Metrics, batch_timeout_s: float, on_death: Callable[[str], None], keep_warm: KeepWarm | None = None,
        nice: int = 0,
    ) -> None:
        """``nice``: how much lower than the process's the worker thread's CPU priority is (see
        :func:`lower_thread_priority`)."""
        self.scheduler = scheduler
        self.runtime = runtime  # anything with run(width, batch) -> logits and a .device
        self.widths = widths
        self.profile = profile
        self.policy = policy
        self.metrics = metrics
        self.batch_timeout_s = batch_timeout_s
        self.on_death = on_death
        self.keep_warm = keep_warm
        self.nice = nice
        self._watchdog = BatchWatchdog(batch_timeout_s, self._on_hung_batch)
        self._thread: threading.Thread | None = None
        # CPU this thread spent on requests outside the model (scheduling, the policy, answering): on
        # a core shared with the model it is per-request cost like the event loop's (HostProbe.request_cpu_s).
        self.request_cpu_s = 0.0
        self._cpu_mark = 0.0  # this thread's CPU clock at the last account
        self._model_cpu_s = 0.0  # CPU in the model (batches, keep-warm) since then

    def start(self) -> None:
        self._watchdog.start()
        self._start_thread()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread (it returns once the scheduler is closed and drained), then stop the watchdog."""
        if self._thread is not None:
            self._thread.join(timeout)
        self._watchdog.stop()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._work, name="widthwise-runtime", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        self._cpu_mark, self._model_cpu_s = time.thread_time(), 0.0  # a thread's CPU clock starts at its own 0
        if self.nice:
            lower_thread_priority(self.nice)
        try:
            self._serve_batches()
        except BaseException as exc:
            log.critical("inference worker died", exc_info=True)
            self.scheduler.close()
            for pending in self.scheduler.drain():
                pending.resolve(Refused(RefusalReason.CLOSED, "inference worker stopped; retry on another replica"))
            self.on_death(f"inference worker died: {type(exc).__name__}: {exc}")

    def _serve_batches(self) -> None:
        """The loop: runs batches inline (no hand-off per batch; see server/watchdog.py)."""
        while True:
            self._account_cpu()
            if self.keep_warm is not None and not self.scheduler.wait_for_work(self.keep_warm.wait_s()):
                self._keep_warm()
                continue
            batch = self.scheduler.next_batch()
            if batch is None:
                return
            self.metrics.record_queue(QueueRecord(self.scheduler.depth()))
            answer_all((pending, Refused(RefusalReason.EXPIRED, "deadline can no longer be met at any width"))
                       for pending in batch.expired)
            if batch.items:
                token = self._watchdog.arm(batch.items)
                owned = False
                try:
                    self._serve(batch.items, batch.decision.width, batch.decision.reason, token)
                except BaseException as exc:  # the worker is dying: answer this batch before it goes
                    if not self._watchdog.claimed(token):
                        self._fail(batch.items, f"inference failed: {type(exc).__name__}")
                    raise
                finally:
                    owned = self._watchdog.disarm(token)
                    if owned:
                        self.scheduler.batch_done()
                if not owned:
                    return  # the watchdog answered this batch and started another worker

    def _account_cpu(self) -> None:
        """Add this thread's CPU since the last call, less what the model took, to ``request_cpu_s``."""
        now = time.thread_time()
        self.request_cpu_s += max(0.0, now - self._cpu_mark - self._model_cpu_s)
        self._cpu_mark, self._model_cpu_s = now, 0.0

    def _keep_warm(self) -> None:
        """One idle-time run; admission sees the worker busy meanwhile, as if it ran a batch. Its CPU
        (the run and the request path in small) is nobody's request: it counts as the model's."""
        width = self.keep_warm.width()
        self.scheduler.reserve_worker(self.scheduler.service(width, 1))
        began = time.thread_time()
        try:
            self.keep_warm.run()
        finally:
            self._model_cpu_s += time.thread_time() - began
            self.scheduler.release_worker()
        self.metrics.record_keep_warm()

    def _on_hung_batch(self, items: list[Pending], elapsed_s: float) -> None:
        """Called by the watchdog thread: the batch outlived ``batch_timeout_s``."""
        log.error("batch of %d requests still running after %.1f s: failing it and starting a new worker",
                  len(items), elapsed_s)
        self._fail(items, f"inference failed: batch did not finish within {self.batch_timeout_s:g} s")
        self.scheduler.batch_done()
        self._start_thread()

    def _execute(self, width: float, items: list[Pending]) -> np.ndarray:
        tensors = [p.request.payload for p in items]
        x = np.concatenate(tensors) if len(tensors) > 1 else tensors[0]
        began = time.thread_time()
        try:
            return self.runtime.run(width, x)
        finally:
            self._model_cpu_s += time.thread_time() - began

    def _serve(self, items: list[Pending], width: float, reason: Reason, token: int | None = None) -> None:
        """Run ``items`` at ``width`` and answer them.

        Out of memory: split the batch and retry, then step down to a narrower
        width, before failing. Any other error fails only these requests; the
        worker goes on with the next batch. ``token`` is the watchdog's for this
        batch: once the watchdog has given up on it, late results are dropped.
        """
        samples = sum(p.request.samples for p in items)
        start = time.monotonic()
        try:
            logits = self._execute(width, items)
        except out_of_memory_errors() as exc:
            self._release_memory()
            if len(items) > 1:
                log.warning("out of memory at width %s, batch %d: splitting", width, samples)
                half = len(items) // 2
                self._serve(items[:half], width, reason, token)
                self._serve(items[half:], width, reason, token)
                return
            idx = self.widths.index(width)
            if idx > 0:
                log.warning("out of memory at width %s for one request: trying width %s", width, self.widths[idx - 1])
                self._serve(items, self.widths[idx - 1], Reason.FALLBACK, token)
                return
            self._fail(items, f"inference failed: out of memory even at the narrowest width ({type(exc).__name__})")
            return
        except Exception as exc:
            log.exception("batch at width %s failed", width)
            self._fail(items, f"inference failed: {type(exc).__name__}")
            return
        end = time.monotonic()
        elapsed = end - start
        if self._watchdog.claimed(token):
            return  # already answered with a 500; a hung batch's time must not enter the profile
        answers, offset = [], 0
        for pending in items:
            req = pending.request
            answers.append((pending, InferenceResult(logits[offset:offset + req.samples], width, reason,
                                                     start - req.arrival, elapsed, samples, pending.audited)))
            offset += req.samples
        answer_all(answers)  # answer first, then the bookkeeping
        self.profile.observe(width, samples, elapsed)
        waits = tuple(start - p.request.arrival for p in items)
        self.metrics.record_batch(BatchRecord(width, samples, elapsed, reason, waits))
        for pending in items:
            req = pending.request
            self.policy.observe(width, end - req.arrival, req.budget_s, end <= req.deadline)

    @staticmethod
    def _fail(items: list[Pending], message: str) -> None:
        answer_all((pending, InferenceFailed(message)) for pending in items)  # an exception each: tracebacks differ

    def _release_memory(self) -> None:
        if self.runtime.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
