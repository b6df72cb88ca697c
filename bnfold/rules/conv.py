"""Conv -> BatchNormalization: scale weight rows [C_out, C_in/group, k...] and fold the shift into the bias.

Any rank (1-D/2-D/3-D), groups, strides, dilations, pads and auto_pad: the output channel is always weight axis 0.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from ..graph import GraphContext, Rewrite
from .affine import fold_bias
from .base import BN_ANCHORS, BatchNorm, ProducerEdit, Refuse, constant_input, constant_update, require_float, tensor_hint
from .linear import fold_after
from .weights import read_weight, scaled_weight

NAME = "conv"
DESCRIPTION = "Conv -> BatchNormalization (1-D/2-D/3-D, any groups, with or without bias)"
ANCHORS = BN_ANCHORS
OP_TYPE = "Conv"


def fold_into(node: onnx.NodeProto, ctx: GraphContext, scale: np.ndarray, shift: Optional[np.ndarray]) -> ProducerEdit:
    weight = read_weight(ctx, node, 1, "weight")
    require_float(weight.value, "weight", node)
    if weight.value.ndim < 3:
        raise Refuse(f"Conv weight has rank {weight.value.ndim}; expected [C_out, C_in/group, k...]")
    if weight.value.shape[0] != scale.size:
        raise Refuse(f"channel mismatch: Conv has {weight.value.shape[0]} output channels, BN has {scale.size}")
    return fold_weight_and_bias(node, ctx, scaled_weight(weight, scale, 0), weight.value.dtype, scale, shift)


def fold_weight_and_bias(node, ctx, weight_edit, dtype, scale, shift) -> ProducerEdit:
    """Shared by Conv and ConvTranspose: the weight updates, and the bias (input 2, created when missing)."""
    updates, weight_error = weight_edit
    edit = ProducerEdit(updates=list(updates), rounding_error=weight_error)
    bias = constant_input(ctx, node, 2, "bias")
    if bias is None and shift is None:
        return edit
    if bias is not None and bias.size != scale.size:
        raise Refuse(f"{node.op_type} bias has {bias.size} values for {scale.size} output channels")
    exact_bias = fold_bias(bias, scale, shift if shift is not None else np.zeros_like(scale))
    bias_dtype = bias.dtype if bias is not None else dtype
    hint = tensor_hint(node, 2, "bnfold") if bias is not None else f"{tensor_hint(node, 1, 'bias')}"
    bias_update, bias_error = constant_update(node, 2, exact_bias, bias_dtype, hint)
    edit.updates.append(bias_update)
    edit.rounding_error = max(edit.rounding_error, bias_error)
    return edit


def match(bn: BatchNorm, ctx: GraphContext) -> Optional[Rewrite]:
    return fold_after(bn, ctx, OP_TYPE, fold_into)
