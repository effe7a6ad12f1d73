"""What this CPU offers ONNX Runtime's kernels (read from /proc/cpuinfo; imports neither onnx nor torch)."""

from __future__ import annotations

import platform

__all__ = ["nchwc_block"]


def nchwc_block(cpuinfo: str = "/proc/cpuinfo") -> int | None:
    """The NCHWc block of ORT's x86 kernels on this CPU (16 with AVX-512F, 8 with AVX2); None elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    if "avx512f" in flags:
        return 16
    return 8 if "avx2" in flags else None
