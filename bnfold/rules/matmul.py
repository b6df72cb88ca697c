"""MatMul -> BatchNormalization: a constant right operand [K, N] scales its columns; the shift becomes an Add.

MatMul stays MatMul (turning it into Gemm would break inputs of rank > 2). BN normalizes axis 1, which is the
MatMul's N axis only when the output is 2-D ([M, N]); Linear on [N, C, L] is refused.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper

from ..graph import GraphContext, Rewrite
from .base import BN_ANCHORS, BatchNorm, ProducerEdit, Refuse, constant_update, tensor_hint
from .linear import fold_after
from .weights import read_matrix, scaled_weight

NAME = "matmul"
DESCRIPTION = "MatMul(X, W[K, N]) -> BatchNormalization on a 2-D output (BatchNorm1d after Linear)"
ANCHORS = BN_ANCHORS
OP_TYPE = "MatMul"


def fold_into(node: onnx.NodeProto, ctx: GraphContext, scale: np.ndarray, shift: Optional[np.ndarray]) -> ProducerEdit:
    weight = read_matrix(ctx, node, 1, "weight")
    rank = ctx.rank(node.input[0])
    if rank is None:
        raise Refuse("rank of the MatMul input is unknown, so BN's channel axis cannot be matched to N")
    if rank != 2:
        raise Refuse(f"MatMul output has rank {rank}: BN normalizes axis 1, not the MatMul's N axis (the last)")
    if weight.value.shape[1] != scale.size:
        raise Refuse(f"channel mismatch: MatMul has {weight.value.shape[1]} output columns, BN has {scale.size}")
    updates, error = scaled_weight(weight, scale, 1)
    edit = ProducerEdit(updates=updates, rounding_error=error)
    if shift is not None:
        add = helper.make_node("Add", [node.output[0]], [ctx.unique_name(f"{node.output[0]}_bnfold_biased")],
                               name=ctx.unique_name(f"{node.name or node.output[0]}_bnfold_bias"))
        bias_update, bias_error = constant_update(add, 1, shift, weight.value.dtype, tensor_hint(node, 1, "bias"))
        edit.updates.append(bias_update)
        edit.inserted.append(add)
        edit.rounding_error = max(error, bias_error)
    return edit


def match(bn: BatchNorm, ctx: GraphContext) -> Optional[Rewrite]:
    return fold_after(bn, ctx, OP_TYPE, fold_into)
