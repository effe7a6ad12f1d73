"""What start-up computes, kept on disk for the next start: exported switches, the latency profile,
MACs and params per width.

A cold start of S-MobileNet v2 224 spends most of its time exporting four switches to ONNX and
measuring the latency profile; neither changes between restarts of the same model on the same
machine. Entries are keyed by a hash of the model's weights and everything that changes the result
(arch, widths, input size; for exports the torch/ONNX versions and channel block; for profiles the
runtime fingerprint, batch sizes and CPU model), so a new checkpoint, another machine or other
flags miss the cache and recompute. Files are written atomically (temporary name, then rename);
an unreadable or corrupt entry is recomputed and overwritten, and a cache directory that cannot be
written (a read-only root filesystem) only costs the speed-up, never the start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from models import SlimmableNet

__all__ = ["StartupCache", "default_cache_dir", "model_digest"]

log = logging.getLogger("widthwise.cache")
FORMAT = 1  # bump when the layout of entries changes


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/widthwise``, else ``~/.cache/widthwise``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "widthwise"


def model_digest(net: SlimmableNet) -> str:
    """SHA-256 of the model's weights and buffers (names, shapes, dtypes and bytes) and its shape."""
    digest = hashlib.sha256(json.dumps({"arch": net.arch, "widths": [float(w) for w in net.widths],
                                        "input_size": net.input_size, "in_channels": net.in_channels,
                                        "num_classes": net.num_classes}, sort_keys=True).encode())
    for name, tensor in net.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (num_batches_tracked) too
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_model(device: str) -> str:
    """What the profile was measured on: the GPU's name on CUDA, the CPU model otherwise."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return _cpu_model()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class StartupCache:
    """Entries for one model in ``directory`` (created on first write)."""

    def __init__(self, directory: Path, net: SlimmableNet) -> None:
        self.directory = Path(directory)
        self.model = model_digest(net)
        self._writable = True

    # -- exported switches ------------------------------------------------------

    def export_key(self, channel_block: int | None) -> str:
        import onnx

        return _key(FORMAT, "export", self.model, torch.__version__, onnx.__version__, channel_block)

    def load_export(self, key: str, width: float) -> bytes | None:
        return self._read_bytes(self.directory / f"export-{key}" / f"{width!r}.onnx")

    def save_export(self, key: str, width: float, model: bytes) -> None:
        self._write(self.directory / f"export-{key}" / f"{width!r}.onnx", model)

    # -- latency profile and costs ---------------------------------------------------

    def profile_key(self, fingerprint: dict, batch_sizes: list[int]) -> str:
        return _key(FORMAT, "profile", self.model, fingerprint, batch_sizes, _device_model(str(fingerprint.get("device"))))

    def load_json(self, name: str) -> dict | None:
        data = self._read_bytes(self.directory / name)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except ValueError:
            log.warning("cache entry %s is corrupt; recomputing it", self.directory / name)
            return None
        return value if isinstance(value, dict) else None

    def save_json(self, name: str, value: dict) -> None:
        self._write(self.directory / name, json.dumps(value).encode())

    def costs_name(self) -> str:
        return f"costs-{_key(FORMAT, 'costs', self.model)}.json"

    # -- files -------------------------------------------------------------------------

    def _read_bytes(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read cache entry %s (%s); recomputing it", path, exc.strerror)
            return None

    def _write(self, path: Path, data: bytes) -> None:
        if not self._writable:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, path)
        except OSError as exc:
            self._writable = False  # one warning, not one per entry
            log.warning("start-up cache %s is not writable (%s): restarts will export and profile again; "
                        "set --cache-dir to a writable directory or --startup-cache off", self.directory,
                        exc.strerror or exc)
