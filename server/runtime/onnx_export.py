"""A width of a slimmable net as ONNX bytes, for the ONNX Runtime backend (needs torch and onnx)."""

from __future__ import annotations

import io
import re
import warnings
from typing import TYPE_CHECKING

import onnx
import torch
from torch import nn

from server.runtime.channel_padding import pad_channels

if TYPE_CHECKING:
    from models import SlimmableNet

__all__ = ["LEGACY_EXPORTER_WARNINGS", "export_onnx", "export_switch_onnx"]

# The TorchScript exporter is deprecated but needs no extra packages (the dynamo one needs
# onnxscript). A process-wide filter, not warnings.catch_warnings(): start-up runs this in a
# thread, and catch_warnings swaps global state under the feet of other threads.
LEGACY_EXPORTER_WARNINGS = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed. Please remove usage of this function",
)


def export_onnx(module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The module as an ONNX model with a dynamic batch dimension."""
    for message in LEGACY_EXPORTER_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=DeprecationWarning)
    buffer = io.BytesIO()
    torch.onnx.export(
        module, (torch.zeros(1, *input_shape),), buffer, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=17,
    )
    return buffer.getvalue()


def export_switch_onnx(net: SlimmableNet, width: float, channel_block: int | None = None) -> bytes:
    """Switch ``width`` as ONNX, BN folded; with ``channel_block``, conv channel counts padded with
    zeros to that multiple (exact; keeps narrow switches in ORT's blocked layout, see channel_padding)."""
    model = export_onnx(net.switch(width, fold_bn=True), (net.in_channels, net.input_size, net.input_size))
    if channel_block:
        proto = onnx.load_from_string(model)
        if pad_channels(proto, channel_block):
            model = proto.SerializeToString()
    return model
