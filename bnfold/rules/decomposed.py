"""Conv / ConvTranspose / Gemm / MatMul -> Mul, Add, Sub, Div by per-channel constants: a BN decomposed into
elementwise ops, as torchvision's FrozenBatchNorm2d (x * scale + shift) and some exporters emit. The chain
composes into one map x * scale + shift that the producer absorbs like a BN.

Anchored on the first op after the producer; the chain goes on while each result feeds only the next op. It is a
decomposed BN when it both scales (Mul/Div) and shifts (Add/Sub): a lone bias Add or scale Mul is no BN and is
left alone. Each constant must apply one value per channel of the output's axis 1 (a scalar does); Sub may have
the constant on either side, Div only as the (non-zero) divisor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import onnx

from ..graph import GraphContext, NotConstant, Rewrite, node_label
from .affine import compose_affine
from .base import (Refuse, is_op, linear_output_channels, linear_output_rank, per_channel_values,
                   require_exclusive)
from .weights import read_weight
from . import conv, conv_transpose, gemm, matmul

NAME = "decomposed"
DESCRIPTION = ("Conv / ConvTranspose / Gemm / MatMul -> Mul|Div and Add|Sub by per-channel constants, in any order "
               "(FrozenBatchNorm2d)")
ANCHORS = ("Mul", "Add", "Sub", "Div")
SCALING, SHIFTING = ("Mul", "Div"), ("Add", "Sub")
PRODUCERS = {module.OP_TYPE: module for module in (conv, conv_transpose, gemm, matmul)}


@dataclass
class _Step:
    """One op of the chain: `node` combines the running value (its input `data_index`) with `constant`."""

    node: onnx.NodeProto
    data_index: int
    constant: np.ndarray


def _step(node: Optional[onnx.NodeProto], data: str, ctx: GraphContext) -> Optional[_Step]:
    """`node` as an affine step applied to `data`, or None when it is not one (other input not constant, c / x)."""
    if not is_op(node, ANCHORS) or len(node.input) != 2 or list(node.input).count(data) != 1:
        return None
    data_index = list(node.input).index(data)
    if node.op_type == "Div" and data_index == 1:
        return None
    try:
        constant = ctx.constant(node.input[1 - data_index])
    except NotConstant:
        return None
    return _Step(node, data_index, constant)


def _chain(anchor: onnx.NodeProto, ctx: GraphContext) -> Optional[List[_Step]]:
    """The steps from `anchor` on, each fed only by the one before; None unless `anchor` follows a producer."""
    for name in anchor.input:
        if is_op(ctx.producer(name), PRODUCERS):
            first = _step(anchor, name, ctx)
            break
    else:
        return None
    chain = [first] if first is not None else []
    while chain:
        output = chain[-1].node.output[0]
        following = _step(ctx.sole_consumer(output), output, ctx)
        if following is None:
            break
        chain.append(following)
    return chain


def match(anchor: onnx.NodeProto, ctx: GraphContext) -> Optional[Rewrite]:
    chain = _chain(anchor, ctx)
    ops = {step.node.op_type for step in chain or ()}
    if not (ops & set(SCALING) and ops & set(SHIFTING)):
        return None
    data = anchor.input[chain[0].data_index]
    producer = ctx.producer(data)
    require_exclusive(producer, data, ctx, anchor)
    weight = read_weight(ctx, producer, 1, "weight").value
    channels = linear_output_channels(producer, weight)
    rank = linear_output_rank(producer, weight, ctx)
    scale, shift = np.ones(channels), np.zeros(channels)
    for step in chain:
        values = per_channel_values(step.constant, rank, channels)
        if values is None:
            raise Refuse(f"{step.node.op_type} {node_label(step.node)!r} constant of shape {list(step.constant.shape)} "
                         f"is not one value per channel of axis 1 of the {producer.op_type} output "
                         f"(rank {rank if rank is not None else 'unknown'})")
        if step.node.op_type == "Div" and not np.all(values):
            raise Refuse(f"Div {node_label(step.node)!r} divides by a constant that contains 0")
        scale, shift = compose_affine(scale, shift, step.node.op_type, values, step.data_index == 0)
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise Refuse("the chain's combined scale or shift overflows")
    edit = PRODUCERS[producer.op_type].fold_into(producer, ctx, scale, shift)
    return Rewrite(
        anchor=anchor,
        into=[producer],
        output_node=producer,
        output=chain[-1].node.output[0],
        removed=[step.node for step in chain[1:]],
        updates=edit.updates,
        attributes=edit.attributes,
        inserted=edit.inserted,
        rounding_error=edit.rounding_error,
    )
