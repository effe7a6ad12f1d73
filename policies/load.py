"""Device load signals: GPU utilization and memory through NVML, CPU utilization otherwise.

Every reader degrades to ``None`` when its source is missing (no NVML library,
no GPU, no /proc): a policy never fails for lack of a signal.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

__all__ = ["DeviceSample", "CpuMonitor", "QuotaCpuMonitor", "NvmlMonitor", "DeviceMonitor"]

log = logging.getLogger("widthwise.load")


@dataclass(frozen=True)
class DeviceSample:
    utilization: float | None  # 0..1
    memory_used_bytes: int | None = None


class CpuMonitor:
    """CPU utilization between two reads of /proc/stat: of the CPUs in ``cpus`` (their ``cpuN``
    lines), or of the whole host (the ``cpu`` line) when ``cpus`` is None."""

    def __init__(self, path: str = "/proc/stat", cpus: Iterable[int] | None = None) -> None:
        self.path = path
        self.names = None if cpus is None else {f"cpu{n}" for n in cpus}
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        total = idle = 0
        found = False
        try:
            with open(self.path) as f:
                for line in f:
                    name, _, values = line.partition(" ")
                    if not name.startswith("cpu"):
                        break  # the cpu lines come first
                    if (name != "cpu") if self.names is None else (name not in self.names):
                        continue
                    fields = [int(v) for v in values.split()]
                    total += sum(fields)
                    idle += fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
                    found = True
        except (OSError, ValueError, IndexError):
            return None
        return (total, idle) if found else None

    def sample(self) -> DeviceSample:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return DeviceSample(None)
        total, idle = now[0] - last[0], now[1] - last[1]
        return DeviceSample(max(0.0, min(1.0, 1.0 - idle / total)))


class QuotaCpuMonitor:
    """CPU time used by a cgroup between two reads, over what its quota allows in that time (``limit``
    CPUs): 1.0 is where the kernel starts throttling it. ``read_usage_s`` returns the cgroup's CPU
    seconds so far (None when unreadable)."""

    def __init__(self, read_usage_s: Callable[[], float | None], limit: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read_usage_s = read_usage_s
        self.limit = limit
        self.clock = clock
        self._last = (clock(), read_usage_s())

    def sample(self) -> DeviceSample:
        now = (self.clock(), self.read_usage_s())
        (t0, u0), self._last = self._last, now
        if u0 is None or now[1] is None or now[0] <= t0 or self.limit <= 0:
            return DeviceSample(None)
        return DeviceSample(max(0.0, min(1.0, (now[1] - u0) / ((now[0] - t0) * self.limit))))


class NvmlMonitor:
    """GPU utilization and memory of one device via ``nvidia-ml-py``; unavailable -> ``None``s."""

    def __init__(self, index: int = 0) -> None:
        self.available = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.available = True
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, no device...
            log.info("NVML unavailable (%s); GPU load signals disabled", exc)

    def sample(self) -> DeviceSample:
        if not self.available:
            return DeviceSample(None)
        try:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            return DeviceSample(util.gpu / 100.0, int(memory.used))
        except Exception:  # a transient NVML error must not break serving
            return DeviceSample(None)


class DeviceMonitor:
    """Keeps the latest sample of the serving device; ``latest`` is safe to read from any thread."""

    def __init__(self, device_type: str, index: int = 0, cpu_reader=None) -> None:
        """``cpu_reader``: the CPU signal to sample on a CPU device (default: the whole host's /proc/stat;
        the server passes ``server.cpus.cpu_monitor()``, which knows its cores and quota)."""
        self.device_type = device_type
        self._reader = NvmlMonitor(index) if device_type == "cuda" else (cpu_reader or CpuMonitor())
        self._lock = threading.Lock()
        self._latest = DeviceSample(None)

    def refresh(self) -> DeviceSample:
        sample = self._reader.sample()
        with self._lock:
            self._latest = sample
        return sample

    @property
    def latest(self) -> DeviceSample:
        with self._lock:
            return self._latest
