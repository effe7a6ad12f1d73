"""What start-up computes, kept on disk for the next start: exported switches, the latency profile,
MACs and params per width.

A cold start of S-MobileNet v2 224 spends most of its time exporting four switches to ONNX and
measuring the latency profile; neither changes between restarts of the same model on the same
machine. Entries are keyed by a hash of the model's weights and everything that changes the result
(arch, widths, input size; for exports the torch/ONNX versions and channel block; for profiles the
runtime fingerprint, batch sizes, CPU model, torch/ONNX Runtime versions and the runtime's
``EXECUTION_REVISION``), so a new checkpoint, another machine, other flags or an upgrade that runs
widths differently miss the cache and recompute. Files are written atomically (temporary name, then rename);
an unreadable or corrupt entry is recomputed and overwritten, and a cache directory that cannot be
written (a read-only root filesystem) only costs the speed-up, never the start.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server.runtime import EXECUTION_REVISION

if TYPE_CHECKING:
    from models import SlimmableNet

__all__ = ["CacheDirectory", "StartupCache", "default_cache_dir", "model_digest", "file_digest"]

log = logging.getLogger("widthwise.cache")
FORMAT = 2  # bump when the layout of entries changes (2: exports carry a digest; versions from metadata)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/widthwise``, else ``~/.cache/widthwise``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "widthwise"


def model_digest(net: "SlimmableNet") -> str:
    """SHA-256 of the model's weights and buffers (names, shapes, dtypes and bytes) and its shape."""
    import torch

    digest = hashlib.sha256(json.dumps({"arch": net.arch, "widths": [float(w) for w in net.widths],
                                        "input_size": net.input_size, "in_channels": net.in_channels,
                                        "num_classes": net.num_classes}, sort_keys=True).encode())
    for name, tensor in net.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (num_batches_tracked) too
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a checkpoint: ~30 ms for S-MobileNet v2)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    """An installed package's version without importing it (torch takes a second to import)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


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
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    return _cpu_model()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class CacheDirectory:
    """Files in ``directory`` (created on first write), written atomically; unreadable ones read as missing."""

    def __init__(self, directory: Path, warn_unwritable: bool = True) -> None:
        """``warn_unwritable``: log once when the directory cannot be written (the engine's cache does;
        the net description written before it stays quiet, so the operator reads it once)."""
        self.directory = Path(directory)
        self._writable = True
        self._warn_unwritable = warn_unwritable

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
            if self._warn_unwritable:
                log.warning("start-up cache %s is not writable (%s): restarts will export and profile again; "
                            "set --cache-dir to a writable directory or --startup-cache off", self.directory,
                            exc.strerror or exc)


class StartupCache(CacheDirectory):
    """Entries for one model in ``directory`` (created on first write)."""

    def __init__(self, directory: Path, net: "SlimmableNet") -> None:
        """``net``: the model whose entries these are; one :func:`~server.engine.cached_net.served_checkpoint` returned
        brings its digest along (``cached_digest``: hashing a CachedNet's weights would load them, and a
        net it just described was hashed already)."""
        super().__init__(directory)
        self.model = getattr(net, "cached_digest", None) or model_digest(net)
        torch_version = _version("torch")  # read once: ~1 ms each, asked once per width
        self._versions = (torch_version, _version("onnx"))
        self._engine_versions = (torch_version, _version("onnxruntime"), EXECUTION_REVISION)  # what times a width

    # -- exported switches ------------------------------------------------------

    def export_key(self, channel_block: int | None) -> str:
        return _key(FORMAT, "export", self.model, *self._versions, channel_block)

    def load_export(self, key: str, width: float) -> bytes | None:
        """The switch's ONNX bytes, or None when missing or not what was written (a SHA-256 beside
        it: checking the bytes this way needs no ONNX parser on a warm start)."""
        path = self.directory / f"export-{key}" / f"{width!r}.onnx"
        model = self._read_bytes(path)
        if model is None:
            return None
        expected = self._read_bytes(path.with_name(path.name + ".sha256"))
        if expected is None or expected.decode(errors="replace").strip() != hashlib.sha256(model).hexdigest():
            log.warning("cached export of width %s is corrupt; exporting again", width)
            return None
        return model

    def save_export(self, key: str, width: float, model: bytes) -> None:
        path = self.directory / f"export-{key}" / f"{width!r}.onnx"
        self._write(path, model)
        self._write(path.with_name(path.name + ".sha256"), hashlib.sha256(model).hexdigest().encode())

    def load_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """Arrays saved by :meth:`save_arrays` (no pickles), or None when missing or unreadable."""
        data = self._read_bytes(self.directory / name)
        if data is None:
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("cache entry %s is corrupt (%s); recomputing it", self.directory / name, exc)
            return None

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self._write(self.directory / name, buffer.getvalue())

    def shared_name(self, export_key: str, widths: tuple[float, ...]) -> str:
        """Where the initializers that several of these switches share are kept (see runtime.shared_initializers)."""
        return f"shared-{_key(FORMAT, 'shared', export_key, [float(w) for w in widths])}.npz"

    # -- latency profile and costs ---------------------------------------------------

    def profile_key(self, fingerprint: dict, batch_sizes: list[int]) -> str:
        return _key(
            FORMAT,
            "profile",
            self.model,
            fingerprint,
            batch_sizes,
            _device_model(str(fingerprint.get("device"))),
            *self._engine_versions,
        )

    def costs_name(self) -> str:
        return f"costs-{_key(FORMAT, 'costs', self.model)}.json"
