"""Conv / ConvTranspose / Gemm -> Reshape | Flatten | Identity -> BatchNormalization: the producer absorbs BN.

Exact when the op in between leaves every element in its channel: BN normalizes axis 1 of what it reads, so that
axis must be the producer's output-channel axis with the same batch split before it. Identity always does.
Flatten(axis=1) of [N, C, spatial...] does: BN's C parameters must match the flattened C * spatial, so any input
the original model accepts has spatial size 1. A Reshape does when its target puts C (or a copy of it, or -1) on
axis 1 and provably keeps axis 0 at the batch size: a copied 0, a literal equal to the declared batch size, or
trailing dims whose product matches the declared spatial size. MatMul producers are left alone: their shift
needs an Add behind the MatMul, ahead of the Reshape.
"""

from __future__ import annotations

from math import prod
from typing import List, Optional

import onnx

from ..graph import GraphContext, Rewrite, attribute, node_label
from .base import (BN_ANCHORS, BatchNorm, Refuse, constant_input, is_op, linear_output_channels,
                   linear_output_rank, require_exclusive)
from .weights import read_weight
from . import conv, conv_transpose, gemm

NAME = "through_reshape"
DESCRIPTION = ("Conv / ConvTranspose / Gemm -> Reshape | Flatten | Identity that keeps the channel axis -> "
               "BatchNormalization")
ANCHORS = BN_ANCHORS
BETWEEN_OPS = ("Reshape", "Flatten", "Identity")
PRODUCERS = {module.OP_TYPE: module for module in (conv, conv_transpose, gemm)}


def _batch_size(producer: onnx.NodeProto, ctx: GraphContext) -> Optional[int]:
    """The declared size of the producer's output axis 0, which is its data input's batch (Gemm: M) axis."""
    axis = 1 if producer.op_type == "Gemm" and attribute(producer, "transA", 0) else 0
    dims = ctx.dims(producer.input[0])
    return dims[axis] if dims is not None and len(dims) > axis else None


def _output_dims(producer: onnx.NodeProto, ctx: GraphContext, rank: int, channels: int) -> List[Optional[int]]:
    """The producer output's dims as far as declared (None where unknown), with the channel count filled in."""
    dims = ctx.dims(producer.output[0])
    dims = list(dims) if dims is not None and len(dims) == rank else [None] * rank
    dims[1] = channels
    if dims[0] is None:
        dims[0] = _batch_size(producer, ctx)
    return dims


def _require_reshape_keeps_channels(reshape: onnx.NodeProto, ctx: GraphContext, source: List[Optional[int]],
                                    what: str) -> None:
    if len(reshape.input) > 1:
        target = constant_input(ctx, reshape, 1, "shape")
    else:
        target = attribute(reshape, "shape", None)
    if target is None:
        raise Refuse(f"Reshape {node_label(reshape)!r} has no target shape")
    target = [int(d) for d in target]
    if len(target) < 2:
        raise Refuse(f"Reshape to {target} leaves no channel axis")
    copies = not attribute(reshape, "allowzero", 0)
    resolved = [source[i] if d == 0 and copies and i < len(source) else d for i, d in enumerate(target)]
    channels = source[1]
    if resolved[1] not in (channels, -1):
        raise Refuse(f"Reshape to {target} puts {resolved[1]} on axis 1, not the {channels} channels of {what}: "
                     "BN's channel axis moves")
    kept_batch = (target[0] == 0 and copies) or (target[0] > 0 and resolved[0] == source[0])
    trailing, spatial = resolved[2:], source[2:]
    if all(d is not None and d > 0 for d in trailing + spatial):
        kept_batch = kept_batch or prod(trailing) == prod(spatial)
    if not kept_batch:
        raise Refuse(f"Reshape to {target} may move BN's channel axis: nothing proves its axis 0 is the batch axis "
                     f"of {what} (declared shape {source})")


def _require_flatten_keeps_channels(flatten: onnx.NodeProto, source: List[Optional[int]], what: str) -> None:
    axis = int(attribute(flatten, "axis", 1))
    axis = axis + len(source) if axis < 0 else axis
    if axis != 1:
        raise Refuse(f"Flatten(axis={axis}) of {what} (rank {len(source)}) moves BN's channel axis")
    spatial = source[2:]
    if all(d is not None for d in spatial) and prod(spatial) != 1:
        raise Refuse(f"Flatten merges the spatial dims {spatial} of {what} into BN's channel axis")


def match(bn: BatchNorm, ctx: GraphContext) -> Optional[Rewrite]:
    between = ctx.producer(bn.input)
    if not is_op(between, BETWEEN_OPS):
        return None
    producer = ctx.producer(between.input[0])
    if not is_op(producer, PRODUCERS):
        return None
    require_exclusive(between, bn.input, ctx, bn.node)
    require_exclusive(producer, between.input[0], ctx, between)
    weight = read_weight(ctx, producer, 1, "weight").value
    rank, channels = linear_output_rank(producer, weight, ctx), linear_output_channels(producer, weight)
    source = _output_dims(producer, ctx, rank, channels)
    what = f"the {producer.op_type} output"
    if between.op_type == "Reshape":
        _require_reshape_keeps_channels(between, ctx, source, what)
    elif between.op_type == "Flatten":
        _require_flatten_keeps_channels(between, source, what)
    edit = PRODUCERS[producer.op_type].fold_into(producer, ctx, bn.scale, bn.shift)
    # Conv, ConvTranspose and Gemm fold without extra nodes, so `between` can take over BN's output directly.
    return Rewrite(
        anchor=bn.node,
        into=[producer],
        output_node=between,
        updates=edit.updates,
        attributes=edit.attributes,
        attribute_node=producer,
        rounding_error=edit.rounding_error,
    )
