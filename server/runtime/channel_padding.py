"""Zero-pad conv channel counts of an exported switch to ONNX Runtime's channel block.

ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc:
16-channel blocks with AVX-512, 8 with AVX2). A tensor whose channel count is
not a multiple of the block, and in particular one thinner than a block,
falls out of that layout: ORT reorders it back to NCHW and runs a generic
conv. Narrow switches are full of such tensors (S-MobileNet v2 at 0.35x has
8-channel bottlenecks at 112x112 and 56x56), which is one reason a narrow
switch barely gets faster than its MACs say (BENCHMARKS.md, "Width ladder").

Padding is exact. A *channel group* is a set of tensors that must share
their channel layout: conv outputs joined by zero-preserving element-wise ops
(ReLU, Clip around 0, residual Add) and depthwise convs. Each conv producing
the group gets zero filters and zero biases for the extra channels, so those
channels are 0 and stay 0 through ReLU/Clip/Add/depthwise; each conv reading
the group gets zero input weights for them, so they add nothing. A group that
reaches anything else (pooling, a graph output, a bias from a constant) is
left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["pad_channels"]

ELEMENTWISE = {"Relu", "Clip", "Add"}


class _Graph:
    """Producer/consumer lookups and constant values of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:  # the exporter shares equal tensors through Constant/Identity nodes
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Identity" and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def is_conv(self, node: onnx.NodeProto) -> bool:
        """A conv with constant weights (and bias) that is plain or depthwise (not otherwise grouped)."""
        if node.op_type != "Conv" or node.input[1] not in self.constants:
            return False
        if len(node.input) > 2 and node.input[2] and node.input[2] not in self.constants:
            return False
        return _group(node) == 1 or self.is_depthwise(node)

    def is_depthwise(self, node: onnx.NodeProto) -> bool:
        weight = self.constants[node.input[1]]
        return _group(node) > 1 and weight.shape[1] == 1 and weight.shape[0] == _group(node)

    def keeps_zero(self, node: onnx.NodeProto) -> bool:
        """An element-wise op that maps 0 to 0 and whose tensor inputs can all be padded alike."""
        if node.op_type == "Relu":
            return True
        if node.op_type == "Clip":
            bounds = [self.constants.get(name) for name in node.input[1:3] if name]
            if any(b is None for b in bounds):
                return False
            low = float(bounds[0]) if len(node.input) > 1 and node.input[1] else -np.inf
            high = float(bounds[-1]) if len(node.input) > 2 and node.input[2] else np.inf
            return low <= 0.0 <= high
        return node.op_type == "Add" and not any(name in self.constants for name in node.input)


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _channel_group(g: _Graph, seed: str) -> set[str] | None:
    """The tensors that must be padded together with ``seed``, or None if that cannot be done exactly."""
    group: set[str] = set()
    todo = [seed]
    while todo:
        name = todo.pop()
        if name in group:
            continue
        if name in g.outputs:
            return None
        group.add(name)
        node = g.producer.get(name)
        if node is None:  # a graph input
            return None
        if g.is_conv(node):
            if g.is_depthwise(node):
                todo.append(node.input[0])
        elif node.op_type in ELEMENTWISE and g.keeps_zero(node):
            todo.extend(node.input if node.op_type == "Add" else node.input[:1])
        else:
            return None
        for user in g.consumers.get(name, []):
            if g.is_conv(user) and user.input[0] == name and name not in user.input[1:]:
                if g.is_depthwise(user):
                    todo.append(user.output[0])
            elif user.op_type in ELEMENTWISE and g.keeps_zero(user):
                if user.op_type != "Add" and name in user.input[1:]:
                    return None
                todo.append(user.output[0])
                if user.op_type == "Add":
                    todo.extend(user.input)
            else:
                return None
    return group


def _pad(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return np.pad(array, widths)


def pad_channels(model: onnx.ModelProto, block: int) -> int:
    """Pad, in place, every channel group whose channel count is not a multiple of ``block``.

    Returns how many groups were padded. The padded model computes the same
    outputs (up to float rounding order, ~1e-7 relative).
    """
    g = _Graph(model)
    seen: set[str] = set()
    groups: list[tuple[set[str], int]] = []
    for node in model.graph.node:
        if not g.is_conv(node) or node.output[0] in seen:
            continue
        channels = g.constants[node.input[1]].shape[0]
        group = _channel_group(g, node.output[0])
        if group is None:
            seen.add(node.output[0])
            continue
        seen |= group
        if channels % block:
            groups.append((group, -(-channels // block) * block))

    padded_size = {name: size for group, size in groups for name in group}
    new_initializers = []
    for node in model.graph.node:
        if not g.is_conv(node):
            continue
        out_size, in_size = padded_size.get(node.output[0]), padded_size.get(node.input[0])
        if out_size is None and in_size is None:
            continue
        weight = g.constants[node.input[1]]
        bias = g.constants[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        if out_size is not None:  # zero filters (and biases) for the extra output channels
            weight, bias = _pad(weight, 0, out_size), None if bias is None else _pad(bias, 0, out_size)
        if g.is_depthwise(node):  # one filter per channel: input and output are in the same group
            for attr in node.attribute:
                if attr.name == "group":
                    attr.i = out_size
        elif in_size is not None:  # zero weights for the extra input channels
            weight = _pad(weight, 1, in_size)
        for index, value in ((1, weight), (2, bias)):
            if value is not None:
                name = f"{node.output[0]}.padded.{'weight' if index == 1 else 'bias'}"
                new_initializers.append(numpy_helper.from_array(value, name))
                node.input[index] = name
    if groups:
        model.graph.initializer.extend(new_initializers)
        _drop_unused_initializers(model)
    return len(groups)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
