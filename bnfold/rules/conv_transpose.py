"""ConvTranspose -> BatchNormalization: the weight is [C_in, C_out/group, k...], so output channel
g * (C_out/group) + j lives in column j of the rows of group g, not in one weight axis."""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from ..graph import GraphContext, Rewrite, attribute
from .affine import scale_conv_transpose_weight
from .base import BN_ANCHORS, BatchNorm, ProducerEdit, Refuse, require_float
from .conv import fold_weight_and_bias
from .linear import fold_after
from .weights import read_weight, scaled_weight

NAME = "conv_transpose"
DESCRIPTION = "ConvTranspose -> BatchNormalization (any rank and groups, depthwise included)"
ANCHORS = BN_ANCHORS
OP_TYPE = "ConvTranspose"


def fold_into(node: onnx.NodeProto, ctx: GraphContext, scale: np.ndarray, shift: Optional[np.ndarray]) -> ProducerEdit:
    weight = read_weight(ctx, node, 1, "weight")
    require_float(weight.value, "weight", node)
    group = int(attribute(node, "group", 1))
    shape = weight.value.shape
    if len(shape) < 3 or group < 1 or shape[0] % group:
        raise Refuse(f"ConvTranspose weight {list(shape)} does not fit group={group}")
    channels = shape[1] * group
    if channels != scale.size:
        raise Refuse(f"channel mismatch: ConvTranspose has {channels} output channels, BN has {scale.size}")
    # With one group the output channels are weight axis 1; with more they interleave over the row groups.
    weight_edit = (scaled_weight(weight, scale, 1) if group == 1 else
                   scaled_weight(weight, scale, 1, scale_conv_transpose_weight(weight.value, scale, group)))
    return fold_weight_and_bias(node, ctx, weight_edit, weight.value.dtype, scale, shift)


def match(bn: BatchNorm, ctx: GraphContext) -> Optional[Rewrite]:
    return fold_after(bn, ctx, OP_TYPE, fold_into)
