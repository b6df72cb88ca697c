"""Producer -> Add(constant per-channel bias) -> BatchNormalization, as paddle2onnx, tf2onnx and TorchScript
(Linear without bias + Add) emit: the producer absorbs the scale, the Add's constant becomes bias * scale + shift.

The constant must broadcast along the output's channel axis (axis 1) only: [C] on a 2-D output, [C, 1, 1] or
[1, C, 1, 1] on a 4-D one. A [C] constant on a 4-D output broadcasts along the last axis and is not matched.
"""

from __future__ import annotations

from typing import Optional

from ..graph import GraphContext, NotConstant, Rewrite
from .base import BN_ANCHORS, BatchNorm, Refuse, constant_update, is_op, per_channel_values, require_exclusive
from . import conv, conv_transpose, gemm, matmul

NAME = "add_bias"
DESCRIPTION = "Conv / ConvTranspose / Gemm / MatMul -> Add(constant per-channel bias) -> BatchNormalization"
ANCHORS = BN_ANCHORS

PRODUCERS = {module.OP_TYPE: module for module in (conv, conv_transpose, gemm, matmul)}


def _output_rank(node, ctx: GraphContext) -> Optional[int]:
    if node.op_type in ("Conv", "ConvTranspose"):
        try:
            return ctx.constant(node.input[1]).ndim
        except NotConstant:
            return None
    if node.op_type == "Gemm":
        return 2
    return ctx.rank(node.output[0])


def match(bn: BatchNorm, ctx: GraphContext) -> Optional[Rewrite]:
    add = ctx.producer(bn.input)
    if not is_op(add, ("Add",)) or len(add.input) != 2:
        return None
    for data_index in (0, 1):
        producer = ctx.producer(add.input[data_index])
        if producer is not None and producer.op_type in PRODUCERS and producer.domain in ("", "ai.onnx"):
            break
    else:
        return None
    try:
        bias = ctx.constant(add.input[1 - data_index])
    except NotConstant:
        return None
    require_exclusive(add, bn.input, ctx, bn.node)
    rank = _output_rank(producer, ctx)
    if rank is None:
        raise Refuse(f"rank of the {producer.op_type} output is unknown, so the Add constant's axes are too")
    per_channel = per_channel_values(bias, rank, bn.channels)
    if per_channel is None:
        raise Refuse(f"Add constant of shape {list(bias.shape)} is not a per-channel bias on axis 1 of the "
                     f"{producer.op_type} output (rank {rank})")
    if bias.dtype.kind != "f" and bias.dtype.name != "bfloat16":
        raise Refuse(f"Add constant has dtype {bias.dtype.name}")
    require_exclusive(producer, add.input[data_index], ctx, add)
    edit = PRODUCERS[producer.op_type].fold_into(producer, ctx, bn.scale, None)
    exact = per_channel * bn.scale + bn.shift
    shape = bias.shape if bias.size > 1 else (bn.channels,) + (1,) * (rank - 2)
    bias_update, bias_error = constant_update(add, 1 - data_index, exact.reshape(shape), bias.dtype,
                                              f"{add.input[1 - data_index] or add.name}_bnfold")
    return Rewrite(
        anchor=bn.node,
        into=[producer, add],
        output_node=add,
        updates=[*edit.updates, bias_update],
        attributes=edit.attributes,
        attribute_node=producer,
        inserted=edit.inserted,
        rounding_error=max(edit.rounding_error, bias_error),
    )
