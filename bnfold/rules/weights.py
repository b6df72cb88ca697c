"""Where a producer's weight comes from, and how to scale its output channels without changing anything else.

A weight is either a constant (initializer, Constant node or constant subexpression), replaced by the scaled
float64 result cast back to its dtype, or the output of DequantizeLinear, possibly through Reshape/Identity, as in
quantized models. There the integer weights stay untouched and the scale absorbs the BN factor, which is exact when
the scale varies along the output-channel axis. A per-tensor scale, or blocks spanning several output channels,
would need re-quantization: refused (fold BN before quantizing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import onnx

from ..graph import Edit, GraphIndex, NotConstant, node_label
from .affine import scale_axis
from .base import Refuse, read_attribute, require_float, set_exact, tensor_hint

# Ops allowed between DequantizeLinear and the producer.
PASS_THROUGH = ("Reshape", "Identity")


@dataclass
class Dequantized:
    """DequantizeLinear's constants: y = (data - zero_point) * scale, per tensor, per `axis`, or in blocks."""

    node: onnx.NodeProto
    data_shape: Tuple[int, ...]
    scale: np.ndarray
    axis: int
    block_size: int


@dataclass
class Weight:
    """A producer's weight as the producer sees it (`value`, float) and where it is stored."""

    node: onnx.NodeProto  # the producer
    index: int  # the producer input that holds it
    value: np.ndarray
    dequantized: Optional[Dequantized] = None


def read_weight(ctx: GraphIndex, node: onnx.NodeProto, index: int, role: str) -> Weight:
    """The weight at `node.input[index]`; Refuse when it is neither constant nor a dequantized constant."""
    if index >= len(node.input) or not node.input[index]:
        raise Refuse(f"{node.op_type} has no {role} input")
    name = node.input[index]
    try:
        return Weight(node, index, ctx.constant(name))
    except NotConstant as why:
        not_constant = why
    chain = _chain_to_dequantize(ctx, name)
    if chain is None:
        raise Refuse(f"{node.op_type} {role} is not a constant: {not_constant}")
    dequantize, reshapes = chain
    try:
        data = ctx.constant(dequantize.input[0])
        scale = ctx.constant(dequantize.input[1])
        zero_point = ctx.constant(dequantize.input[2]) if len(dequantize.input) > 2 and dequantize.input[2] else None
        shapes = [[int(d) for d in ctx.constant(reshape.input[1])] for reshape in reshapes]
    except NotConstant as why:
        raise Refuse(f"quantized {role} of {node.op_type}: {why}") from None
    info = Dequantized(dequantize, data.shape, scale,
                       int(read_attribute(dequantize, "axis", 1)) % max(data.ndim, 1),
                       int(read_attribute(dequantize, "block_size", 0)))
    value = (data.astype(np.float64) - (_expand(zero_point, info) if zero_point is not None else 0.0))
    value = (value * _expand(scale, info)).astype(scale.dtype)
    for shape in shapes:
        value = value.reshape([value.shape[i] if d == 0 else d for i, d in enumerate(shape)])
    return Weight(node, index, value, info)


def read_matrix(ctx: GraphIndex, node: onnx.NodeProto, index: int, role: str) -> Weight:
    """A 2-D float weight (Gemm's B, MatMul's right operand)."""
    weight = read_weight(ctx, node, index, role)
    require_float(weight.value, role, node)
    if weight.value.ndim != 2:
        raise Refuse(f"{node.op_type} {role} has rank {weight.value.ndim}; only a 2-D weight folds")
    return weight


def read_plain_weight(ctx: GraphIndex, node: onnx.NodeProto, index: int, role: str) -> np.ndarray:
    """A float weight that a fold rewrites as a whole (scaling its input channels): a quantized one is refused,
    since its per-output-channel scales cannot absorb a per-input-channel factor."""
    weight = read_weight(ctx, node, index, role)
    if weight.dequantized is not None:
        raise Refuse(f"{node.op_type} {node_label(node)!r} {role} is quantized; scaling its input channels would "
                     "need re-quantization")
    require_float(weight.value, role, node)
    return weight.value


def _chain_to_dequantize(ctx: GraphIndex, name: str):
    """(DequantizeLinear, [Reshape nodes from it to `name`]) when `name` is reached only through PASS_THROUGH
    ops, each read by nothing else; None when no DequantizeLinear is there (a cycle included)."""
    names, seen = [], set()
    while name not in seen:
        seen.add(name)
        node = ctx.producer(name)
        if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ("DequantizeLinear",
                                                                                    *PASS_THROUGH):
            return None
        names.append(name)
        if node.op_type == "DequantizeLinear":
            for passed in names:
                if len(ctx.users(passed)) != 1 or ctx.is_graph_output(passed):
                    raise Refuse(f"quantized weight {passed!r} is shared with another node; it cannot be "
                                 "rescaled for one")
            reshapes = [ctx.producer(passed) for passed in names[:-1]]
            return node, [n for n in reversed(reshapes) if n.op_type == "Reshape"]
        name = node.input[0]
    return None


def _expand(parameter: np.ndarray, info: Dequantized) -> np.ndarray:
    """A DequantizeLinear scale or zero point broadcast to the data shape."""
    parameter = parameter.astype(np.float64)
    if parameter.size == 1:
        return parameter.reshape(())
    if info.block_size:
        repeated = np.repeat(parameter, info.block_size, axis=info.axis)
        return repeated[tuple(slice(0, d) for d in info.data_shape)]
    view = [1] * len(info.data_shape)
    view[info.axis] = -1
    return parameter.reshape(view)


def scale_weight(edit: Edit, weight: Weight, scale: np.ndarray, axis: int,
                 exact: Optional[np.ndarray] = None) -> None:
    """Plan the multiplication of the weight's output channels, laid along `axis`, by `scale`.

    `exact` is the float64 scaled weight where output channels do not lie on one axis (grouped ConvTranspose);
    constant weights take it as is, dequantized ones are refused.
    """
    if weight.dequantized is None:
        if exact is None:
            # float32 and wider: round each float64 product once, straight into the weight's dtype (no rounding
            # error to report there); narrower dtypes keep the float64 result to measure their rounding.
            wide = weight.value.dtype.itemsize >= 4 and weight.value.dtype.kind == "f"
            exact = scale_axis(weight.value, scale, axis, weight.value.dtype if wide else np.float64)
        set_exact(edit, weight.node, weight.index, exact, weight.value.dtype,
                  tensor_hint(weight.node, weight.index, "bnfold"))
        return
    if exact is not None:
        raise Refuse(f"quantized {weight.node.op_type} weight: its output channels do not lie on one weight axis")
    _scale_dequantized(edit, weight.dequantized, weight.value.shape, scale, axis)


def _scale_dequantized(edit: Edit, info: Dequantized, seen_shape, scale: np.ndarray, axis: int) -> None:
    if info.scale.size == 1:
        raise Refuse("quantized weight has a per-tensor scale; folding needs re-quantization (fold BN first)")
    if tuple(info.data_shape) != tuple(seen_shape) and not (axis == 0 and info.data_shape[0] == seen_shape[0]):
        raise Refuse("the reshape after DequantizeLinear moves the weight's output-channel axis")
    if info.block_size:
        if info.axis == axis and info.block_size != 1:
            raise Refuse(f"quantization blocks of {info.block_size} span several output channels; folding needs "
                         "re-quantization")
        scale_axis_index = axis
    elif info.axis == axis:
        scale_axis_index = 0
    else:
        raise Refuse(f"quantized weight is scaled per axis {info.axis}, not per output channel (axis {axis}); "
                     "folding needs re-quantization")
    if info.scale.shape[scale_axis_index] != scale.size:
        raise Refuse(f"quantization scale has {info.scale.shape[scale_axis_index]} entries for {scale.size} "
                     "output channels")
    exact = scale_axis(info.scale, scale, scale_axis_index)
    set_exact(edit, info.node, 1, exact, info.scale.dtype, tensor_hint(info.node, 1, "bnfold"))

