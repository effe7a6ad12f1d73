"""The engine: one model's state, admission and inference, behind the async interface the protocols use
(:class:`~server.api.client.EngineClient`).

Handlers make two calls, :meth:`Engine.admit` (before decoding) and :meth:`Engine.infer`, then hand
the answer to :meth:`Engine.answered`, which judges it against the request's deadline; they read
:attr:`Engine.card` and :meth:`Engine.describe` and never touch torch. The engine is an async context
manager entered in the FastAPI lifespan; start-up (:mod:`server.engine.startup`) runs in a thread so
``/healthz`` answers while ``/readyz`` still says 503. Batches run on the
:class:`~server.engine.worker.BatchWorker`'s thread; the :class:`~server.engine.host_probe.HostProbe`
watches the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from models.card import ModelCard
from policies import (
    Pending,
    Policy,
    RefusalReason,
    Refused,
    ScheduledRequest,
    Scheduler,
    batch_sizes_up_to,
    make_policy,
)
from policies.deadline import Deadline, Deadlines
from server.engine.errors import InvalidRequest
from server.engine.handoff import LoopAnswer
from server.engine.host_probe import HostProbe
from server.engine.keep_warm import KeepWarm
from server.engine.startup import Started, start_model
from server.engine.worker import BatchWorker, InferenceResult
from server.metrics import Metrics, ModelRecord, QueueRecord, RequestRecord, width_label
from server.runtime import Runtime, return_freed_heap
from server.settings import Settings
from server.statistics import ModelStatistics

if TYPE_CHECKING:
    from models import SlimmableNet

__all__ = ["Admission", "Engine", "InferenceResult", "Readiness"]

log = logging.getLogger("widthwise.engine")


@dataclass(frozen=True)
class Admission:
    """A request admitted by :meth:`Engine.admit`: its pinned width (None: the policy's choice), its
    deadline (fixed here, once) and how many samples it carries."""

    width: float | None
    deadline: Deadline
    samples: int = 1
    audited: bool = False  # admission would have refused it: served to time it (--admission-audit)

    @property
    def budget_s(self) -> float | None:
        return self.deadline.budget_s


class Readiness(enum.Enum):
    """What ``/readyz`` says: 200 only when READY."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


_ORDER = {Readiness.STARTING: 0, Readiness.READY: 1, Readiness.DRAINING: 2, Readiness.FAILED: 3}


class Engine:
    """Serves one slimmable model. Construct, then ``async with engine:``."""

    def __init__(
        self, net: "SlimmableNet", settings: Settings, metrics: Metrics, model_name: str,
        runtime_factory: type[Runtime] = Runtime, card: ModelCard | None = None,
    ) -> None:
        """``runtime_factory`` builds the runtime at start-up (``Runtime``; tests inject one that fails on
        cue); ``card`` describes the model (default: the net's own)."""
        self.net = net
        self.settings = settings
        self.metrics = metrics
        self.name = model_name
        self.card = card if card is not None else ModelCard.for_net(net)
        # validated before any start-up work: a bad --policy fails at once
        self.policy: Policy = make_policy(settings.policy, net.widths, dict(self.card.accuracy) or None)
        reserve = settings.reserve_ms / 1e3 if settings.reserve_ms is not None else None
        self.deadlines = Deadlines(fixed_reserve_s=reserve)
        self.probe = HostProbe(self.deadlines, metrics)
        self.started: Started | None = None
        self.scheduler: Scheduler | None = None
        self.worker: BatchWorker | None = None
        self.state = Readiness.STARTING
        self.failure: str | None = None  # why the engine cannot serve: failed start-up or a dead worker
        self._state_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._admitted = 0  # requests admitted and not yet answered (event loop only)
        self._startup: threading.Thread | None = None
        self._lag_watch: asyncio.Task | None = None
        self._runtime_factory = runtime_factory
        # Called with the error when the engine cannot serve (start-up failed, the worker died), from the
        # failing thread; `serve` sets it to shut down and exit non-zero so the process gets restarted.
        self.on_fatal: Callable[[str], None] | None = None
        # Run in the start-up thread after the model is warm, before readiness turns 200; raising fails start-up.
        self.before_ready: list[Callable[[], None]] = []
        self.idle_touches: list[Callable[[], None]] = []  # run by the keep-warm loop (server/engine/keep_warm.py)

    # -- what start-up made ----------------------------------------------

    @property
    def runtime(self) -> Runtime | None:
        return self.started.runtime if self.started else None

    @property
    def profile(self):
        return self.started.profile if self.started else None

    @property
    def cache(self):
        return self.started.cache if self.started else None

    # -- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> "Engine":
        self._startup = threading.Thread(target=self._start_up, name="widthwise-startup", daemon=True)
        self._startup.start()
        self._lag_watch = asyncio.get_running_loop().create_task(self.probe.watch(lambda: self.ready))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _start_up(self) -> None:
        try:
            began = time.monotonic()
            batch_sizes = batch_sizes_up_to(self.settings.max_batch_size)
            self.probe.read_host()
            started = start_model(self.net, self.card, self.settings, self._runtime_factory, batch_sizes, self.name)
            self.started = started
            for hook in self.before_ready:  # e.g. warming the HTTP request path (server/api/warmup.py)
                hook()
            return_freed_heap()
            runtime = started.runtime
            self.probe.model_started(runtime.device.type, runtime.threads, self._worker_cpu_s,
                                     lambda: started.profile.speed)
            if runtime.device.type == "cuda":
                from server.runtime.nvml import NvmlMonitor

                self.metrics.watch_device(str(runtime.device), NvmlMonitor(runtime.device.index or 0).sample)
            self.scheduler = Scheduler(self.policy, started.profile, self.net.widths, self.settings.scheduler_config(),
                                       request_cpu=lambda: self.probe.request_cpu_s)
            self.worker = BatchWorker(self.scheduler, runtime, self.net.widths, started.profile, self.policy,
                                      self.metrics, self.settings.batch_timeout_s, on_death=self._fatal,
                                      keep_warm=self._keep_warm(runtime),
                                      nice=self.settings.worker_nice if self.probe.shares_cores_with_model else 0)
            self.worker.start()
            self.metrics.record_model(ModelRecord(self.net.arch, self.net.widths, str(runtime.device),
                                                  self.settings.queue_limit))
            self._advance(Readiness.READY)
            log.info("ready in %.1f s: %s on %s (%s backend, %s weights, intra-op threads %d of %d usable CPUs), "
                     "widths %s", time.monotonic() - began, self.name, runtime.device, runtime.backend,
                     self.weights_mode, runtime.threads, self.probe.usable_cpus,
                     ", ".join(width_label(w) for w in self.net.widths))
        except Exception as exc:
            log.debug("start-up failed", exc_info=True)
            self._fatal(f"start-up failed: {type(exc).__name__}: {exc}")

    def _worker_cpu_s(self) -> float:
        return self.worker.request_cpu_s if self.worker is not None else 0.0

    def _keep_warm(self, runtime: Runtime) -> KeepWarm | None:
        if not self.settings.keep_warm_ms:
            return None
        spec = self.card.input
        sample = np.zeros((1, spec.channels, spec.size, spec.size), np.float32)
        return KeepWarm(runtime, self.net.widths, sample, self.settings.keep_warm_ms / 1e3, tuple(self.idle_touches))

    def _fatal(self, failure: str) -> None:
        """The engine can no longer serve: readiness 503 from now on, then ``on_fatal`` (or a log line)."""
        self.failure = failure
        self._advance(Readiness.FAILED)
        if self.on_fatal is not None:
            self.on_fatal(failure)
        else:
            log.error("%s", failure)

    @property
    def ready(self) -> bool:
        return self.state is Readiness.READY

    def _advance(self, state: Readiness) -> None:
        """Readiness only moves forward (starting -> ready -> draining; failed from anywhere):
        a start-up that completes during a drain must not turn the server ready again."""
        with self._state_lock:
            if _ORDER[state] > _ORDER[self.state]:
                self.state = state

    def wait_ready(self, timeout: float | None = None) -> bool:
        if self._startup is not None:
            self._startup.join(timeout)
        return self.ready

    def begin_drain(self) -> None:
        """Readiness goes 503 and new requests get 503; queued work still finishes."""
        self._advance(Readiness.DRAINING)
        if self.scheduler is not None:
            self.scheduler.close()

    async def close(self, timeout: float = 30.0) -> None:
        self.begin_drain()
        if self._lag_watch is not None:
            self._lag_watch.cancel()
        if self._startup is not None:
            await asyncio.to_thread(self._startup.join, timeout)
        if self.scheduler is not None:
            self.scheduler.close()
        if self.worker is not None:
            await asyncio.to_thread(self.worker.join, timeout)

    def idle(self) -> bool:
        """Nothing queued and no admitted request still waiting for its answer (shutdown waits for this)."""
        return self._admitted == 0 and (self.scheduler is None or self.scheduler.depth() == 0)

    # -- requests -----------------------------------------------------------

    def admit(self, width: float | None, budget_ms: float | None, arrival: float, samples: int = 1) -> Admission:
        """Step one of a request, before its body is decoded: its deadline (from its own budget, else
        ``--default-budget-ms``, else none; counted from ``arrival``, when the server first saw it) and
        a cheap admission check, so a request that would be refused costs no decoding.

        Raises:
            InvalidRequest: more ``samples`` than ``--max-batch-size``.
            Refused: not ready, draining, queue full, or the deadline cannot be met.
        """
        self._check_samples(samples)
        self.probe.count_request()
        if width is not None:
            declared = self.card.match_width(width)
            if declared is None:  # handlers parse widths against the card first: a caller's bug
                raise ValueError(f"width {width!r} is not declared")
            width = declared
        if budget_ms is None:
            budget_ms = self.settings.default_budget_ms
        deadline = self.deadlines.deadline(arrival, budget_ms / 1e3 if budget_ms is not None else None)
        self._require_ready()
        audited = self.scheduler.precheck(width, deadline.budget_s, samples, deadline=deadline.at)
        return Admission(width, deadline, samples, audited)

    def _check_samples(self, samples: int) -> None:
        limit = self.settings.max_batch_size
        if samples > limit:
            raise InvalidRequest(f"batch of {samples} exceeds max_batch_size {limit}")

    def _require_ready(self) -> None:
        state = self.state
        if state is not Readiness.READY:
            if state is Readiness.DRAINING:
                raise Refused(RefusalReason.CLOSED, "server is shutting down")
            raise Refused(RefusalReason.NOT_READY, "model failed; see /readyz" if state is Readiness.FAILED
                          else "model is not ready")

    async def infer(self, admission: Admission, tensor: np.ndarray) -> InferenceResult:
        """Step two: queue ``tensor`` ([samples, C, H, W]) under ``admission`` and wait for its logits.

        Raises:
            InvalidRequest: ``tensor`` has more samples than ``--max-batch-size``.
            Refused: as :meth:`admit`, now with the queue as it is.
        """
        self._check_samples(int(tensor.shape[0]))
        self._require_ready()  # again: the engine may have started draining since admit
        deadline = admission.deadline
        if deadline.budget_s is not None:
            self.metrics.record_budget(deadline.budget_s)
        request = ScheduledRequest(
            id=next(self._ids), samples=int(tensor.shape[0]), width=admission.width, deadline=deadline.at,
            arrival=time.monotonic(), budget_s=deadline.budget_s, payload=tensor,
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self.scheduler.admit(Pending(request, LoopAnswer(loop, future), audited=admission.audited))  # raises Refused
        self._admitted += 1
        self.metrics.record_queue(QueueRecord(self.scheduler.depth(), self._admitted))
        try:
            return await future
        finally:
            self._admitted -= 1
            self.metrics.record_queue(QueueRecord(self.scheduler.depth(), self._admitted))

    def answered(self, admission: Admission, result: InferenceResult, total_s: float) -> bool:
        """Step three, once the handler has the answer ``total_s`` after the request arrived: whether it
        is within the budget. The handler's own time (outside queue and inference) feeds the reserve.

        Raises:
            Refused: (``expired``, 504) with ``--admission reject``, when the answer is ready too late to
                reach the client in time: never a late 200.
        """
        deadline = admission.deadline
        self.deadlines.note_overhead(total_s - result.queue_s - result.inference_s)
        if result.audited:
            self.metrics.record_audit(deadline.met(deadline.arrival + total_s))
        reject = self.settings.admission == "reject"
        if reject and self.deadlines.too_late(deadline.arrival, deadline.budget_s, deadline.arrival + total_s):
            raise Refused(RefusalReason.EXPIRED, f"answer ready {total_s * 1e3:.1f} ms after the request arrived, "
                                                 f"too late for its {deadline.budget_s * 1e3:g} ms budget")
        return deadline.met(deadline.arrival + total_s)

    def record_outcome(self, record: RequestRecord) -> None:
        """Count one request's outcome (metrics and statistics, from the same record)."""
        self.metrics.record_request(record)

    # -- description ---------------------------------------------------------

    @property
    def weights_mode(self) -> str | None:
        """``per-width`` (each width its own folded copy) or ``shared`` (``--weights``: one copy for every
        width); None before the runtime is built. A runtime that does not say (a test double) is per-width."""
        return getattr(self.runtime, "weights", "per-width") if self.runtime else None

    def statistics(self) -> ModelStatistics:
        """Triton's statistics of this model, from the same records as the metrics."""
        return self.metrics.statistics

    def describe(self) -> dict:
        """What ``GET /v1/models`` returns (and what the v2 model config reads)."""
        card, runtime, profile = self.card, self.runtime, self.profile
        latencies = profile.as_dict()["widths"] if profile else None
        costs = self.started.costs if self.started else {}
        return {
            "name": self.name,
            "arch": card.arch,
            "ready": self.ready,
            "state": self.state.value,
            "device": str(runtime.device) if runtime else None,
            "backend": runtime.backend if runtime else None,
            "weights": self.weights_mode,
            "policy": self.policy.name,
            # the event loop's CPU per request on the model's cores (null: it has cores of its own);
            # `widthwise simulate --request-cpu-ms` models it
            "request_cpu_ms": self.probe.request_cpu_s * 1e3 if self.probe.request_cpu_s is not None else None,
            # recent batch times over the start-up profile, shared by every width (latency_ms includes it)
            "device_speed": profile.speed if profile else None,
            "input": {"channels": card.input.channels, "size": card.input.size,
                      "mean": list(card.input.mean), "std": list(card.input.std)},
            "num_classes": card.num_classes,
            "labels": list(card.labels) if card.labels is not None else None,
            # Where expected_accuracy comes from; null when the checkpoint does not say (then it is null too).
            "accuracy_source": card.accuracy_source,
            "widths": [
                {
                    "width": w,
                    "macs": costs.get(w, {}).get("macs"),
                    "params": costs.get(w, {}).get("params"),
                    "expected_accuracy": card.accuracy.get(w),
                    "latency_ms": {b: s * 1e3 for b, s in latencies[str(w)].items()} if latencies else None,
                }
                for w in card.widths
            ],
        }

