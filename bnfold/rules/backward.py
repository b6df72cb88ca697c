"""BatchNormalization -> Conv / Gemm / MatMul: BN's map x * scale + shift folds into the nodes that *read* it.

Each consumer's weight is scaled along its input-channel axis and the shift, pushed through the weight, joins its
bias. That is exact only where every output sums whole windows of the BN output: a Conv that pads would multiply
padded zeros that never received the shift, so it is refused unless the shift is exactly 0. All consumers fold or
none does; when they fold the BN disappears and they read its input instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from ..graph import GraphContext, InputUpdate, Rewrite, attribute, node_label
from .affine import conv_input_affine, rows_affine
from .base import BN_ANCHORS, BatchNorm, Refuse, constant_input, constant_update, is_op, shared_rank, tensor_hint
from .weights import read_plain_weight

NAME = "backward"
DESCRIPTION = ("BatchNormalization -> Conv (unpadded, or any padding when BN's shift is 0; any groups) / "
               "Gemm (transA=0) / MatMul on a 2-D input, for every consumer of the BN")
ANCHORS = BN_ANCHORS
CONSUMER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class _Absorption:
    """One consumer's new constants; `matmul_bias` is the [N] vector a MatMul needs added after it, in
    `bias_dtype`."""

    updates: List[InputUpdate] = field(default_factory=list)
    rounding_error: float = 0.0
    matmul_bias: Optional[np.ndarray] = None
    bias_dtype: Optional[np.dtype] = None

    def update(self, node: onnx.NodeProto, index: int, exact: np.ndarray, dtype, hint: str) -> None:
        new, error = constant_update(node, index, exact, dtype, hint)
        self.updates.append(new)
        self.rounding_error = max(self.rounding_error, error)


def _padding(conv: onnx.NodeProto, kernel: Tuple[int, ...]) -> Optional[str]:
    """How the Conv pads its input, or None when it provably pads nothing (SAME with a 1x1 kernel pads 0)."""
    auto_pad = attribute(conv, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return None if all(k == 1 for k in kernel) else f"auto_pad={auto_pad} with kernel {list(kernel)}"
    pads = list(attribute(conv, "pads", None) or [])
    return f"pads={pads}" if any(pads) else None


def _conv(conv: onnx.NodeProto, ctx: GraphContext, bn: BatchNorm) -> _Absorption:
    weight = read_plain_weight(ctx, conv, 1, "weight")
    group = int(attribute(conv, "group", 1))
    if weight.ndim < 3 or group < 1 or weight.shape[0] % group:
        raise Refuse(f"Conv {node_label(conv)!r} weight {list(weight.shape)} does not fit group={group}")
    if weight.shape[1] * group != bn.channels:
        raise Refuse(f"channel mismatch: Conv {node_label(conv)!r} has {weight.shape[1] * group} input channels, "
                     f"BN has {bn.channels}")
    has_shift = bool(np.any(bn.shift))
    padding = _padding(conv, tuple(attribute(conv, "kernel_shape", None) or weight.shape[2:]))
    if has_shift and padding:
        raise Refuse(f"Conv {node_label(conv)!r} pads its input ({padding}) and BN's shift is not zero: "
                     "the padded zeros would receive the shift")
    bias = constant_input(ctx, conv, 2, "bias")
    new_weight, new_bias = conv_input_affine(weight, bias, bn.scale, bn.shift, group)
    absorption = _Absorption()
    absorption.update(conv, 1, new_weight, weight.dtype, tensor_hint(conv, 1, "bnfold"))
    if bias is not None or has_shift:
        hint = tensor_hint(conv, 2, "bnfold") if bias is not None else tensor_hint(conv, 1, "bias")
        absorption.update(conv, 2, new_bias, bias.dtype if bias is not None else weight.dtype, hint)
    return absorption


def _gemm(gemm: onnx.NodeProto, ctx: GraphContext, bn: BatchNorm) -> _Absorption:
    """Y = alpha * A @ B' + beta * C: BN scales the K rows of B' (B, or B^T with transB=1); the shift adds
    alpha * (shift @ B') to Y, so C becomes C + (alpha / beta) * (shift @ B') and beta stays."""
    if attribute(gemm, "transA", 0):
        raise Refuse(f"Gemm {node_label(gemm)!r} has transA=1: BN's channel axis is the Gemm's M axis, not K")
    weight = read_plain_matrix(ctx, gemm, 1, "B")
    trans_b = bool(attribute(gemm, "transB", 0))
    rows = weight.T if trans_b else weight
    if rows.shape[0] != bn.channels:
        raise Refuse(f"channel mismatch: Gemm {node_label(gemm)!r} has K={rows.shape[0]}, BN has {bn.channels}")
    scaled, added = rows_affine(rows, bn.scale, bn.shift)
    absorption = _Absorption()
    absorption.update(gemm, 1, scaled.T if trans_b else scaled, weight.dtype, tensor_hint(gemm, 1, "bnfold"))
    if not np.any(added):
        return absorption
    beta = float(attribute(gemm, "beta", 1.0))
    if beta == 0.0:
        raise Refuse(f"Gemm {node_label(gemm)!r} has beta=0, so its bias C cannot absorb BN's shift")
    bias = constant_input(ctx, gemm, 2, "C")
    exact = float(attribute(gemm, "alpha", 1.0)) / beta * added
    if bias is not None:
        exact = bias.astype(np.float64) + exact
    hint = tensor_hint(gemm, 2, "bnfold") if bias is not None else tensor_hint(gemm, 1, "bias")
    absorption.update(gemm, 2, exact, bias.dtype if bias is not None else weight.dtype, hint)
    return absorption


def _matmul(matmul: onnx.NodeProto, ctx: GraphContext, bn: BatchNorm) -> _Absorption:
    weight = read_plain_matrix(ctx, matmul, 1, "weight")
    rank = shared_rank(ctx, bn.input, bn.output)
    if rank is None:
        raise Refuse("rank of the BN input is unknown, so its channel axis cannot be matched to the MatMul's K axis")
    if rank != 2:
        raise Refuse(f"MatMul input has rank {rank}: BN normalizes axis 1, not the MatMul's K axis (the last)")
    if weight.shape[0] != bn.channels:
        raise Refuse(f"channel mismatch: MatMul {node_label(matmul)!r} has K={weight.shape[0]}, "
                     f"BN has {bn.channels}")
    scaled, added = rows_affine(weight, bn.scale, bn.shift)
    absorption = _Absorption(matmul_bias=added if np.any(added) else None, bias_dtype=weight.dtype)
    absorption.update(matmul, 1, scaled, weight.dtype, tensor_hint(matmul, 1, "bnfold"))
    return absorption


def read_plain_matrix(ctx: GraphContext, node: onnx.NodeProto, index: int, role: str) -> np.ndarray:
    weight = read_plain_weight(ctx, node, index, role)
    if weight.ndim != 2:
        raise Refuse(f"{node.op_type} {role} has rank {weight.ndim}; only a 2-D weight folds")
    return weight


FOLDS = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul}


def _bias_adds(biased: List[Tuple[onnx.NodeProto, _Absorption]], ctx: GraphContext):
    """Add nodes putting each MatMul's bias back, all inserted after the last of those MatMuls, and the rewiring of
    the MatMuls' readers to them. Refuses where one insertion point would break the graph's node order."""
    positions = {id(node): index for index, node in enumerate(ctx.nodes)}
    last = max((matmul for matmul, _ in biased), key=lambda node: positions[id(node)])
    for matmul, _ in biased:
        output = matmul.output[0]
        if ctx.is_graph_output(output):
            raise Refuse(f"MatMul {node_label(matmul)!r} output is a graph output, which would not see the bias "
                         "Add that BN's shift needs")
        for user in ctx.users(output):
            if output not in user.input:
                raise Refuse(f"MatMul {node_label(matmul)!r} output is read inside a subgraph of "
                             f"{node_label(user)!r}, which cannot be pointed at a bias Add")
            if positions.get(id(user), -1) <= positions[id(last)]:
                raise Refuse(f"{node_label(user)!r} reads MatMul {node_label(matmul)!r} before MatMul "
                             f"{node_label(last)!r}, after which bnfold would insert the bias Adds")
    adds, updates, rewire, error = [], [], [], 0.0
    for matmul, absorption in biased:
        output = matmul.output[0]
        add = helper.make_node("Add", [output], [ctx.unique_name(f"{output}_bnfold_biased")],
                               name=ctx.unique_name(f"{matmul.name or output}_bnfold_bias"))
        update, bias_error = constant_update(add, 1, absorption.matmul_bias, absorption.bias_dtype,
                                             tensor_hint(matmul, 1, "bias"))
        rewire += [(user, index, add.output[0]) for user in ctx.users(output)
                   for index, name in enumerate(user.input) if name == output]
        adds.append(add)
        updates.append(update)
        error = max(error, bias_error)
    return adds, last, updates, rewire, error


def match(bn: BatchNorm, ctx: GraphContext) -> Optional[Rewrite]:
    consumers = ctx.users(bn.output)
    if not any(is_op(node, CONSUMER_OPS) for node in consumers):
        return None
    if ctx.is_graph_output(bn.output):
        raise Refuse(f"BN output {bn.output!r} is also a graph output")
    others = sorted({f"{node.op_type} {node_label(node)!r}" for node in consumers if not is_op(node, CONSUMER_OPS)})
    if others:
        raise Refuse(f"BN output also feeds {', '.join(others)}, which cannot absorb it")
    absorptions = []
    for node in consumers:
        reads = [index for index, name in enumerate(node.input) if name == bn.output]
        if reads != [0]:
            raise Refuse(f"{node.op_type} {node_label(node)!r} reads the BN output as input {reads}, not only as "
                         "its data input 0")
        absorptions.append(FOLDS[node.op_type](node, ctx, bn))
    updates = [update for absorption in absorptions for update in absorption.updates]
    rewire = [(node, 0, bn.input) for node in consumers]
    error = max(absorption.rounding_error for absorption in absorptions)
    biased = [(node, a) for node, a in zip(consumers, absorptions) if a.matmul_bias is not None]
    adds, insert_after = [], None
    if biased:
        adds, insert_after, bias_updates, bias_rewire, bias_error = _bias_adds(biased, ctx)
        updates += bias_updates
        rewire += bias_rewire
        error = max(error, bias_error)
    return Rewrite(anchor=bn.node, into=consumers, updates=updates, inserted=adds, insert_after=insert_after,
                   rewire=rewire, rounding_error=error)
