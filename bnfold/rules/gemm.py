"""Gemm -> BatchNormalization: Y = alpha * A' @ B' + beta * C with BN over Y's columns (axis 1 of [M, N]).

B's output-channel axis is 1, or 0 with transB=1. The bias C may be absent, a scalar, [N] or [1, N]; a per-row
[M, N] or [M, 1] bias cannot absorb a per-column map and is refused. The folded C already includes beta, so beta
becomes 1.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from ..graph import GraphContext, Rewrite, attribute
from .base import BN_ANCHORS, ProducerEdit, BatchNorm, Refuse, constant_input, constant_update, tensor_hint
from .linear import fold_after
from .weights import read_matrix, scaled_weight

NAME = "gemm"
DESCRIPTION = "Gemm -> BatchNormalization (transA/transB, alpha/beta, bias absent, scalar, [N] or [1, N])"
ANCHORS = BN_ANCHORS
OP_TYPE = "Gemm"


def fold_into(node: onnx.NodeProto, ctx: GraphContext, scale: np.ndarray, shift: Optional[np.ndarray]) -> ProducerEdit:
    weight = read_matrix(ctx, node, 1, "B")
    axis = 0 if attribute(node, "transB", 0) else 1
    channels = weight.value.shape[axis]
    if channels != scale.size:
        raise Refuse(f"channel mismatch: Gemm has {channels} output columns, BN has {scale.size}")
    updates, error = scaled_weight(weight, scale, axis)
    edit = ProducerEdit(updates=updates, rounding_error=error)
    bias = constant_input(ctx, node, 2, "C")
    if bias is None and shift is None:
        return edit
    beta = float(attribute(node, "beta", 1.0))
    if bias is None:
        per_column, shape = np.zeros(channels), (channels,)
    elif bias.size == 1:
        per_column, shape = np.full(channels, bias.astype(np.float64).reshape(-1)[0]), (channels,)
    elif bias.shape in ((channels,), (1, channels)):
        per_column, shape = bias.astype(np.float64).reshape(-1), bias.shape
    else:
        raise Refuse(f"Gemm bias C has shape {list(bias.shape)}; only a scalar, [N] or [1, N] bias can absorb "
                     "a per-column BN")
    exact = beta * per_column * scale + (shift if shift is not None else 0.0)
    dtype = bias.dtype if bias is not None else weight.value.dtype
    hint = tensor_hint(node, 2, "bnfold") if bias is not None else tensor_hint(node, 1, "bias")
    bias_update, bias_error = constant_update(node, 2, exact.reshape(shape), dtype, hint)
    edit.updates.append(bias_update)
    edit.rounding_error = max(edit.rounding_error, bias_error)
    if beta != 1.0:
        edit.attributes["beta"] = 1.0
    return edit


def match(bn: BatchNorm, ctx: GraphContext) -> Optional[Rewrite]:
    return fold_after(bn, ctx, OP_TYPE, fold_into)
