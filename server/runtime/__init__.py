"""Runtimes: one batch at one width on a device, by backend -- ONNX Runtime, torch on CPU, torch on
CUDA. Each backend module imports its library at the top; :class:`Runtime` imports the one it uses."""

from server.runtime.config import RuntimeConfig
from server.runtime.runtime import (
    EXECUTION_REVISION,
    Device,
    Runtime,
    profile_runtime,
    resolve_backend,
    resolve_device,
    return_freed_heap,
    runtime_fingerprint,
)

__all__ = ["EXECUTION_REVISION", "Device", "Runtime", "RuntimeConfig", "profile_runtime", "resolve_backend",
           "resolve_device", "return_freed_heap", "runtime_fingerprint"]
