"""Device load signals: GPU utilization and memory through NVML, CPU utilization otherwise.

Every reader degrades to ``None`` when its source is missing (no NVML library,
no GPU, no /proc): a policy never fails for lack of a signal.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

__all__ = ["DeviceSample", "CpuMonitor", "NvmlMonitor", "DeviceMonitor"]

log = logging.getLogger("widthwise.load")


@dataclass(frozen=True)
class DeviceSample:
    utilization: float | None  # 0..1
    memory_used_bytes: int | None = None


class CpuMonitor:
    """CPU utilization between two reads of /proc/stat."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            with open(self.path) as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def sample(self) -> DeviceSample:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return DeviceSample(None)
        total, idle = now[0] - last[0], now[1] - last[1]
        return DeviceSample(max(0.0, min(1.0, 1.0 - idle / total)))


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

    def __init__(self, device_type: str, index: int = 0) -> None:
        self.device_type = device_type
        self._reader = NvmlMonitor(index) if device_type == "cuda" else CpuMonitor()
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
