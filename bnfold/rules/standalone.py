"""A BatchNormalization with no neighbour to fold into becomes x * scale + shift: one Mul and one Add.

Runs last. It leaves alone every BN whose input a producer rule is responsible for (a Conv, ConvTranspose, Gemm
or MatMul output, directly, behind a constant-bias Add, or behind a Reshape/Flatten/Identity): those fold or stay
with the producer rule's reason. What is left sits after a graph input, a Concat, pooling, PRelu, Relu or a
residual Add, with consumers the backward rule could not fold into. The constants have shape [C, 1, ..., 1] so
they broadcast on axis 1, which needs the input's rank, and X's dtype, which needs its declared type.
`--skip standalone` keeps these BNs instead.
"""

from __future__ import annotations

from typing import Optional

from onnx import helper

from ..graph import GraphContext, NotConstant, Rewrite
from .base import BN_ANCHORS, BatchNorm, Refuse, constant_update, is_op, shared_rank
from . import add_bias, conv, conv_transpose, gemm, matmul, through_reshape

NAME = "standalone"
DESCRIPTION = ("BatchNormalization with no foldable neighbour (after an input, Concat, pooling, Relu...) -> "
               "Mul + Add by per-channel constants; --skip standalone keeps it")
ANCHORS = BN_ANCHORS
LINEAR_OPS = tuple(module.OP_TYPE for module in (conv, conv_transpose, gemm, matmul))


def _is_constant(name: str, ctx: GraphContext) -> bool:
    try:
        ctx.constant(name)
    except NotConstant:
        return False
    return True


def _producer_rule_applies(bn: BatchNorm, ctx: GraphContext) -> bool:
    """Whether BN's input has the shape of a producer rule's pattern (whatever that rule then decided)."""
    node = ctx.producer(bn.input)
    if is_op(node, LINEAR_OPS):
        return True
    if is_op(node, ("Add",)) and len(node.input) == 2:
        return any(is_op(ctx.producer(node.input[data]), add_bias.PRODUCERS)
                   and _is_constant(node.input[1 - data], ctx) for data in (0, 1))
    return is_op(node, through_reshape.BETWEEN_OPS) and is_op(ctx.producer(node.input[0]),
                                                               through_reshape.PRODUCERS)


def match(bn: BatchNorm, ctx: GraphContext) -> Optional[Rewrite]:
    if _producer_rule_applies(bn, ctx):
        return None
    rank = shared_rank(ctx, bn.input, bn.output)
    if rank is None:
        raise Refuse("rank of the BN input is unknown, so per-channel Mul/Add constants cannot be shaped; "
                     "run ONNX shape inference on the model first")
    if rank < 2:
        raise Refuse(f"BN input has rank {rank}; BatchNormalization needs [N, C, ...]")
    dtype = ctx.dtype(bn.input) or ctx.dtype(bn.output)
    if dtype is None:
        raise Refuse("element type of the BN input is not declared, so the Mul/Add constants' dtype is unknown; "
                     "run ONNX shape inference on the model first")
    label = bn.node.name or bn.output
    shape = (bn.channels,) + (1,) * (rank - 2)
    mul = helper.make_node("Mul", [bn.input], [ctx.unique_name(f"{bn.output}_bnfold_scaled")],
                           name=ctx.unique_name(f"{label}_bnfold_mul"))
    add = helper.make_node("Add", [mul.output[0]], [bn.output], name=ctx.unique_name(f"{label}_bnfold_add"))
    scale_update, scale_error = constant_update(mul, 1, bn.scale.reshape(shape), dtype, f"{label}_bnfold_scale")
    shift_update, shift_error = constant_update(add, 1, bn.shift.reshape(shape), dtype, f"{label}_bnfold_shift")
    return Rewrite(anchor=bn.node, into=[mul, add], updates=[scale_update, shift_update], inserted=[mul, add],
                   rounding_error=max(scale_error, shift_error))
