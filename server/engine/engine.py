"""The engine: model card + runtime + scheduler + batch worker, behind an async interface.

HTTP handlers make two calls, :meth:`Engine.admit` (before decoding) and :meth:`Engine.infer`,
and read :attr:`Engine.card` and :meth:`Engine.describe`; they never touch torch. The engine is
an async context manager entered in the FastAPI lifespan; start-up work (export, warm-up,
profiling) runs in a thread so ``/healthz`` answers while ``/readyz`` still says 503. Batches run
on the :class:`~server.worker.BatchWorker`'s thread.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from models.card import ModelCard
from policies import (
    LatencyProfile,
    Pending,
    Policy,
    RefusalReason,
    Refused,
    ScheduledRequest,
    Scheduler,
    batch_sizes_up_to,
    make_policy,
)
from policies.load import DeviceMonitor
from server.engine.errors import InvalidRequest
from server.engine.keep_warm import KeepWarm
from server.engine.startup_cache import StartupCache, default_cache_dir
from server.engine.worker import BatchWorker, InferenceResult
from server.metrics import DeviceRecord, Metrics, ModelRecord, QueueRecord, width_label
from server.runtime import Runtime, profile_runtime, return_freed_heap
from server.runtime.cpus import cpu_monitor, usable_cpus
from server.settings import Settings

if TYPE_CHECKING:
    from models import SlimmableNet

__all__ = ["Admission", "Engine", "InferenceResult", "Readiness"]

log = logging.getLogger("widthwise.engine")

@dataclass(frozen=True)
class Admission:
    """A request admitted by :meth:`Engine.admit`: its pinned width, the budget it runs under, and
    when the server first saw it (``time.monotonic()``)."""

    width: float | None
    budget_s: float | None
    arrival: float
    samples: int = 1


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
        """``runtime_factory`` builds the runtime at start-up (``Runtime``; tests inject one that fails on cue);
        ``card`` describes the model (default: from the net's checkpoint metadata)."""
        self.net = net
        self.settings = settings
        self.metrics = metrics
        self.model_name = model_name
        self.card = card if card is not None else ModelCard.from_net(net)
        self.policy: Policy = make_policy(settings.policy, net.widths, dict(self.card.accuracy) or None)  # validate before start-up work
        self.runtime: Runtime | None = None
        self.usable_cpus = 1  # the affinity mask capped by the CPU quota, read at start-up (server/cpus.py)
        self.profile: LatencyProfile | None = None
        self.scheduler: Scheduler | None = None
        self.state = Readiness.STARTING
        self.failure: str | None = None  # why the engine cannot serve: failed start-up or a dead worker
        self._state_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._admitted = 0  # requests admitted and not yet answered (event loop only)
        self.worker: BatchWorker | None = None
        self._startup: threading.Thread | None = None
        self._stopped = threading.Event()
        self._overhead_s = 0.0005  # learnt handler time outside the engine (see reserve_s)
        self._loop_lag_s = 0.0  # recent 90th percentile of the event loop's scheduling delay (see reserve_s)
        self._lags: collections.deque[float] = collections.deque(maxlen=self.LAG_WINDOW)
        self._requests_seen = 0  # requests that reached admit (event loop only)
        # The event loop's CPU per request, when it runs on the cores the model computes on (else None).
        self.request_cpu_s: float | None = None
        self._lag_watch: asyncio.Task | None = None
        self._runtime_factory = runtime_factory
        self.monitor: DeviceMonitor | None = None
        self.cache: StartupCache | None = None  # exports, profile and costs kept between starts
        self._costs: dict[float, dict[str, int]] = {}  # MACs and params per width, counted at start-up
        # Called with the error when the engine cannot serve (start-up failed, the worker died), from the
        # failing thread; `serve` sets it to shut down and exit non-zero so the process gets restarted.
        self.on_fatal: Callable[[str], None] | None = None
        # Run in the start-up thread after the model is warm, before readiness turns 200; raising fails start-up.
        self.before_ready: list[Callable[[], None]] = []
        self.idle_touches: list[Callable[[], None]] = []  # run by the keep-warm loop (server/keep_warm.py)

    # -- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> "Engine":
        self._startup = threading.Thread(target=self._start_up, name="widthwise-startup", daemon=True)
        self._startup.start()
        self._lag_watch = asyncio.get_running_loop().create_task(self._watch_loop_lag())
        return self

    # Every probe wakes the loop (and, on a shared core, preempts the batch): at 5 ms they cost an
    # idle server 3-4% of a core, at 20 ms ~1% (BENCHMARKS.md, "Session 9").
    LAG_PROBE_S = 0.02
    LAG_WINDOW = 50  # probes: about the last second
    LAG_PERCENTILE_EVERY = 5  # probes: about every 0.1 s

    async def _watch_loop_lag(self) -> None:
        """How late the event loop runs a timer: the delay a request's first bytes also wait before the
        server reads them (a busy loop, or a core shared with inference), which no handler can time.
        Kept as the 90th percentile of the last second's probes; what start-up did (exports and
        profiling hold the GIL) is forgotten at readiness."""
        loop = asyncio.get_running_loop()
        window_start, cpu_start, seen_start = loop.time(), self._serving_cpu_s(), self._requests_seen
        probes = 0
        while True:
            before = loop.time()
            await asyncio.sleep(self.LAG_PROBE_S)
            now = loop.time()
            self._lags.append(max(0.0, now - before - self.LAG_PROBE_S))
            probes += 1
            if probes % self.LAG_PERCENTILE_EVERY == 0:  # a percentile, so one stall (a GC pause) does not count
                if self.ready:
                    self._loop_lag_s = sorted(self._lags)[int(0.9 * (len(self._lags) - 1))]
                    self.metrics.record_event_loop(self._loop_lag_s, self.request_cpu_s,
                                                   self.profile.speed if self.profile else None)
                else:
                    self._lags.clear()
            if now - window_start >= self.CPU_WINDOW_S:
                # The server's own CPU per request seen: this thread's (HTTP, inline decoding, replies) and
                # the worker thread's outside the model (scheduling, the policy, answering).
                cpu, seen = self._serving_cpu_s(), self._requests_seen
                if seen > seen_start and self._shares_cores_with_model():
                    per_request = (cpu - cpu_start) / (seen - seen_start)
                    previous = self.request_cpu_s
                    self.request_cpu_s = per_request if previous is None else previous + 0.3 * (per_request - previous)
                window_start, cpu_start, seen_start = now, cpu, seen

    CPU_WINDOW_S = 1.0

    def _serving_cpu_s(self) -> float:
        """CPU seconds so far of the event loop (the calling thread) and of the worker outside the model."""
        return time.thread_time() + (self.worker.request_cpu_s if self.worker is not None else 0.0)

    def _shares_cores_with_model(self) -> bool:
        """The model's threads take every core this process may use (CPU runtime), so the event loop's
        work delays batches; with a GPU or spare cores it does not."""
        runtime = self.runtime
        if runtime is None or runtime.device.type != "cpu":
            return False
        return runtime.threads >= self.usable_cpus

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _start_up(self) -> None:
        try:
            began = time.monotonic()
            batch_sizes = batch_sizes_up_to(self.settings.max_batch_size)
            self.cache = self._startup_cache()
            self._costs = self._static_costs()  # a forward per width: not before uvicorn listens
            widths = self.net.widths
            log.info("start-up: exporting %d widths of %s (%s)%s", len(widths), self.model_name, self.net.arch,
                     f", cache {self.cache.directory}" if self.cache else "")
            self.usable_cpus = usable_cpus()
            self.runtime = self._runtime_factory.from_config(
                self.net, self.settings.runtime_config(), batch_sizes,
                progress=_progress_logger("exported", widths, began), cache=self.cache,
            )
            self.profile = self._latency_profile(batch_sizes)
            if self.settings.save_profile:
                self._save_profile(self.settings.save_profile)
            for hook in self.before_ready:  # e.g. warming the HTTP request path (server/warmup.py)
                hook()
            return_freed_heap()
            self.monitor = DeviceMonitor(self.runtime.device.type, self.runtime.device.index or 0,
                                         cpu_monitor() if self.runtime.device.type == "cpu" else None)
            self.scheduler = Scheduler(
                self.policy, self.profile, self.net.widths, self.settings.scheduler_config(),
                utilization=lambda: self.monitor.latest.utilization,
                request_cpu=lambda: self.request_cpu_s,
            )
            self._sampler = threading.Thread(target=self._sample_load, name="widthwise-load", daemon=True)
            self._sampler.start()
            self.worker = BatchWorker(self.scheduler, self.runtime, self.net.widths, self.profile, self.policy,
                                      self.metrics, self.settings.batch_timeout_s, on_death=self._fatal,
                                      keep_warm=self._keep_warm(),
                                      nice=self.settings.worker_nice if self._shares_cores_with_model() else 0)
            self.worker.start()
            self._publish_static_metrics()
            self._advance(Readiness.READY)
            log.info("ready in %.1f s: %s on %s (%s backend, %s weights, intra-op threads %d of %d usable CPUs), "
                     "widths %s", time.monotonic() - began, self.model_name, self.runtime.device, self.runtime.backend,
                     self.weights_mode, self.runtime.threads, self.usable_cpus,
                     ", ".join(width_label(w) for w in widths))
        except Exception as exc:
            log.debug("start-up failed", exc_info=True)
            self._fatal(f"start-up failed: {type(exc).__name__}: {exc}")

    def _keep_warm(self) -> KeepWarm | None:
        if not self.settings.keep_warm_ms:
            return None
        spec = self.card.input
        sample = np.zeros((1, spec.channels, spec.size, spec.size), np.float32)
        return KeepWarm(self.runtime, self.net.widths, sample, self.settings.keep_warm_ms / 1e3,
                        tuple(self.idle_touches))

    def _fatal(self, failure: str) -> None:
        """The engine can no longer serve: readiness 503 from now on, then ``on_fatal`` (or a log line)."""
        self.failure = failure
        self._advance(Readiness.FAILED)
        if self.on_fatal is not None:
            self.on_fatal(failure)
        else:
            log.error("%s", failure)

    def _latency_profile(self, batch_sizes: list[int]) -> LatencyProfile:
        """The ``--profile`` file if given (and measured on this model, device, backend and threads),
        else measured now through the runtime."""
        path = self.settings.profile
        if path:
            profile = LatencyProfile.load(path, self.settings.profile_ewma_alpha)
            wrong = profile.mismatches(self.runtime.fingerprint)
            if wrong:
                raise ValueError(f"--profile {path} was not measured for this server: {'; '.join(wrong)}. "
                                 "Measure one here with `widthwise serve --save-profile PATH` (or `widthwise "
                                 "profile --save-profile PATH` with the same flags), or leave --profile out")
            log.info("start-up: latency profile from %s; warming up %d widths", path, len(self.net.widths))
            self.runtime.warm_up(batch_sizes)  # measuring would have warmed every (width, batch) up
            return profile
        cached_name = f"profile-{self.cache.profile_key(self.runtime.fingerprint, batch_sizes)}.json" \
            if self.cache else None
        if cached_name:
            data = self.cache.load_json(cached_name)
            if data is not None:
                try:
                    profile = LatencyProfile.from_dict(data, self.settings.profile_ewma_alpha)
                except ValueError:
                    log.warning("cached latency profile %s is invalid; measuring again", cached_name)
                else:
                    log.info("start-up: latency profile from the cache (%s); warming up %d widths", cached_name,
                             len(self.net.widths))
                    self.runtime.warm_up(batch_sizes)
                    return profile
        log.info("start-up: measuring the latency profile (%d widths x batch sizes %s, %d runs each)",
                 len(self.net.widths), batch_sizes, self.settings.profile_repeats)
        profile = profile_runtime(self.runtime, batch_sizes, self.settings.profile_repeats,
                                  progress=_progress_logger("profiled", self.net.widths, time.monotonic()))
        profile.ewma_alpha = self.settings.profile_ewma_alpha
        if cached_name:
            self.cache.save_json(cached_name, profile.as_dict())
        return profile

    def _startup_cache(self) -> StartupCache | None:
        if not self.settings.startup_cache:
            return None
        return StartupCache(self.settings.cache_dir or default_cache_dir(), self.net)

    def _save_profile(self, path) -> None:
        """``--save-profile``: the profile as measured, with its fingerprint and the expected accuracy (for simulate)."""
        data = self.profile.as_dict()
        if self.card.accuracy:
            data["accuracy"] = {str(w): a for w, a in self.card.accuracy.items()}
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
        log.info("start-up: latency profile written to %s", path)

    def _publish_static_metrics(self) -> None:
        self.metrics.record_model(ModelRecord(self.net.arch, self.net.widths, str(self.runtime.device),
                                              self.settings.queue_limit))

    def _sample_load(self) -> None:
        """Refresh device load once a second; export GPU gauges when NVML has them."""
        device = str(self.runtime.device)
        while not self._stopped.wait(1.0):
            sample = self.monitor.refresh()
            if self.runtime.device.type == "cuda":
                self.metrics.record_device(DeviceRecord(device, sample.utilization, sample.memory_used_bytes))

    @property
    def ready(self) -> bool:
        return self.state is Readiness.READY

    def _advance(self, state: "Readiness") -> None:
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
        self._stopped.set()

    # -- requests -----------------------------------------------------------

    def admit(self, width: float | None, budget_ms: float | None, arrival: float, samples: int = 1) -> Admission:
        """Step one of a request, before its body is decoded: the budget it runs under (its own, else
        ``--default-budget-ms``, else none) and a cheap admission check, so a request that would be
        refused costs no decoding.

        Raises:
            InvalidRequest: more ``samples`` than ``--max-batch-size``.
            Refused: not ready, draining, queue full, or the deadline cannot be met.
        """
        self._check_samples(samples)
        self._requests_seen += 1
        if width is not None:
            declared = self.card.match_width(width)
            if declared is None:  # handlers parse widths against the card first: a caller's bug
                raise ValueError(f"width {width!r} is not declared")
            width = declared
        if budget_ms is None:
            budget_ms = self.settings.default_budget_ms
        admission = Admission(width, budget_ms / 1e3 if budget_ms is not None else None, arrival, samples)
        self._require_ready()
        self.scheduler.precheck(width, admission.budget_s, samples,
                                deadline=self._deadline(admission.budget_s, arrival))
        return admission

    def _check_samples(self, samples: int) -> None:
        limit = self.settings.max_batch_size
        if samples > limit:
            raise InvalidRequest(f"batch of {samples} exceeds max_batch_size {limit}")

    def _deadline(self, budget_s: float | None, arrival: float) -> float:
        """When the engine must be done: ``arrival + budget - reserve`` (no budget: never)."""
        return arrival + budget_s - self.reserve_s(budget_s) if budget_s is not None else math.inf

    async def infer(self, admission: Admission, tensor: np.ndarray) -> InferenceResult:
        """Step two: queue ``tensor`` ([samples, C, H, W]) under ``admission`` and wait for its logits.

        The engine plans for the deadline ``arrival + budget - reserve``: the budget counts from
        when the server got the request, and the reserve keeps time for the reply.

        Raises:
            InvalidRequest: ``tensor`` has more samples than ``--max-batch-size``.
            Refused: as :meth:`admit`, now with the queue as it is.
        """
        self._check_samples(int(tensor.shape[0]))
        return await self._submit(tensor, admission.width, admission.budget_s, admission.arrival)

    def _require_ready(self) -> None:
        state = self.state
        if state is not Readiness.READY:
            if state is Readiness.DRAINING:
                raise Refused(RefusalReason.CLOSED, "server is shutting down")
            raise Refused(RefusalReason.NOT_READY, "model failed; see /readyz" if state is Readiness.FAILED
                          else "model is not ready")

    MAX_RESERVE_FRACTION = 0.25

    def reserve_s(self, budget_s: float | None = None) -> float:
        """Time kept free of the budget for everything outside the engine (HTTP, decoding, the reply).

        ``--reserve-ms`` when set; otherwise learnt: 1 ms for what the server cannot see
        (client and network), the running average of the time the handler itself spends
        outside queue and inference, and the event loop's recent scheduling delay (bytes
        wait that long before the server reads them), which grow when the loop is busy.
        Never more than a quarter of the budget: the estimate only learns from served
        requests, so an uncapped reserve that outgrew the budgets would refuse every
        request and never learn again.
        """
        reserve = self.settings.reserve_ms / 1e3 if self.settings.reserve_ms is not None else 0.001 + self._overhead_s + self._loop_lag_s
        return min(reserve, self.MAX_RESERVE_FRACTION * budget_s) if budget_s is not None else reserve

    def reply_margin_s(self, budget_s: float) -> float:
        """Time an answer still needs after it is ready -- the reply's turn on the event loop, the
        write, the network and the client -- so one ready this close to its budget arrives late.
        1 ms plus the loop's recent scheduling delay (the reserve's parts outside the handler),
        never more than a quarter of the budget; 0 with an explicit ``--reserve-ms``.
        Measured live before it existed: late 200s were 1 ms late at the median, 3 ms at p90."""
        if self.settings.reserve_ms is not None:
            return 0.0
        return min(0.001 + self._loop_lag_s, self.MAX_RESERVE_FRACTION * budget_s)

    def note_overhead(self, seconds: float) -> None:
        """Feed the handler's own non-engine time of one request (called on the event loop)."""
        if seconds >= 0:
            self._overhead_s += 0.05 * (seconds - self._overhead_s)

    async def _submit(self, tensor: np.ndarray, width: float | None, budget_s: float | None,
                      received_at: float) -> InferenceResult:
        self._require_ready()  # again: the engine may have started draining since admit
        if budget_s is not None:
            self.metrics.record_budget(budget_s)
        now = time.monotonic()
        deadline = self._deadline(budget_s, received_at)
        request = ScheduledRequest(
            id=next(self._ids), samples=int(tensor.shape[0]), width=width, deadline=deadline, arrival=now,
            budget_s=budget_s, payload=tensor,
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def resolve(value: Any) -> None:
            loop.call_soon_threadsafe(_settle, future, value)

        self.scheduler.admit(Pending(request, resolve))  # raises Refused
        self._admitted += 1
        self.metrics.record_queue(QueueRecord(self.scheduler.depth(), self._admitted))
        try:
            return await future
        finally:
            self._admitted -= 1
            self.metrics.record_queue(QueueRecord(self.scheduler.depth(), self._admitted))

    def idle(self) -> bool:
        """Nothing queued and no admitted request still waiting for its answer (shutdown waits for this)."""
        return self._admitted == 0 and (self.scheduler is None or self.scheduler.depth() == 0)

    # -- description ---------------------------------------------------------

    def _static_costs(self) -> dict[float, dict[str, int]]:
        """MACs and params per width (a forward each; from the start-up cache when it has them)."""
        name = self.cache.costs_name() if self.cache else None
        cached = self.cache.load_json(name) if name else None
        try:
            if cached is not None:
                return {w: {"macs": int(cached[repr(w)]["macs"]), "params": int(cached[repr(w)]["params"])}
                        for w in self.net.widths}
        except (KeyError, TypeError, ValueError):
            log.warning("cached MACs/params %s are invalid; counting again", name)
        from models.profiling import count_macs, count_params

        shape = (self.net.in_channels, self.net.input_size, self.net.input_size)
        costs = {}
        for width in self.net.widths:
            module = self.net.switch(width)
            costs[width] = {"macs": count_macs(module, shape), "params": count_params(module)}
        if name:
            self.cache.save_json(name, {repr(w): c for w, c in costs.items()})
        return costs

    @property
    def weights_mode(self) -> str | None:
        """``per-width`` (each width its own folded copy) or ``shared`` (``--weights``: one copy for every
        width); None before the runtime is built. A runtime that does not say (a test double) is per-width."""
        return getattr(self.runtime, "weights", "per-width") if self.runtime else None

    def describe(self) -> dict:
        """What ``GET /v1/models`` returns."""
        card = self.card
        profile = self.profile.as_dict()["widths"] if self.profile else None
        return {
            "name": self.model_name,
            "arch": card.arch,
            "ready": self.ready,
            "state": self.state.value,
            "device": str(self.runtime.device) if self.runtime else None,
            "backend": self.runtime.backend if self.runtime else None,
            "weights": self.weights_mode,
            "policy": self.policy.name,
            # the event loop's CPU per request on the model's cores (null: it has cores of its own);
            # `widthwise simulate --request-cpu-ms` models it
            "request_cpu_ms": self.request_cpu_s * 1e3 if self.request_cpu_s is not None else None,
            # recent batch times over the start-up profile, shared by every width (latency_ms includes it)
            "device_speed": self.profile.speed if self.profile else None,
            "input": {"channels": card.input.channels, "size": card.input.size,
                      "mean": list(card.input.mean), "std": list(card.input.std)},
            "num_classes": card.num_classes,
            "labels": list(card.labels) if card.labels is not None else None,
            # Where expected_accuracy comes from; null when the checkpoint does not say (then it is null too).
            "accuracy_source": card.accuracy_source,
            "widths": [
                {
                    "width": w,
                    "macs": self._costs.get(w, {}).get("macs"),
                    "params": self._costs.get(w, {}).get("params"),
                    "expected_accuracy": card.accuracy.get(w),
                    "latency_ms": {b: s * 1e3 for b, s in profile[str(w)].items()} if profile else None,
                }
                for w in card.widths
            ],
        }


def _progress_logger(what: str, widths: tuple[float, ...], began: float) -> Callable[[float], None]:
    """A ``progress(width)`` callback logging 'width 0.5 exported (2/4, 1.3 s)'."""
    done = itertools.count(1)

    def report(width: float) -> None:
        log.info("start-up: width %s %s (%d/%d, %.1f s)", width_label(width), what, next(done), len(widths),
                 time.monotonic() - began)

    return report


def _settle(future: asyncio.Future, value: Any) -> None:
    if future.done():  # the client went away and the handler was cancelled
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
