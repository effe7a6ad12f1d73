"""GPU utilization and memory of one device through NVML (``nvidia-ml-py``), for the GPU gauges.

Every read degrades to ``None`` when NVML is missing (no library, no GPU): a server never fails for
lack of telemetry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["DeviceSample", "NvmlMonitor"]

log = logging.getLogger("widthwise.runtime")


@dataclass(frozen=True)
class DeviceSample:
    utilization: float | None  # 0..1
    memory_used_bytes: int | None = None


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
            log.info("NVML unavailable (%s); GPU gauges disabled", exc)

    def sample(self) -> DeviceSample:
        if not self.available:
            return DeviceSample(None)
        try:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            return DeviceSample(util.gpu / 100.0, int(memory.used))
        except Exception:  # a transient NVML error must not break a scrape
            return DeviceSample(None)
