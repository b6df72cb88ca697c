"""What every folding rule shares: reading a BatchNormalization, refusing with a reason, building updates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx

from ..graph import GraphContext, InputUpdate, NotConstant, attribute, node_label
from .affine import FoldMathError, bn_affine, cast_exact, max_rounding_error


# What a BN rule anchors on: the driver reads the BN (eval mode, constant parameters) before offering it.
BN_ANCHORS = ("BatchNormalization",)


class Refuse(Exception):
    """A rule recognised its pattern but cannot fold it exactly; str() is the reason shown in the report."""


@dataclass
class BatchNorm:
    """An eval-mode BN reduced to its per-channel affine map y = x * scale + shift (float64)."""

    node: onnx.NodeProto
    scale: np.ndarray
    shift: np.ndarray

    @property
    def input(self) -> str:
        return self.node.input[0]

    @property
    def output(self) -> str:
        return self.node.output[0]

    @property
    def channels(self) -> int:
        return self.scale.size


def read_batchnorm(bn: onnx.NodeProto, ctx: GraphContext, opset: int) -> BatchNorm:
    """Check that a BN is foldable at all (eval mode, constant finite parameters) and compute its affine map."""
    if len(bn.input) < 5 or not all(bn.input[:5]):
        raise Refuse("BatchNormalization needs 5 inputs (X, scale, B, mean, var)")
    if attribute(bn, "training_mode", 0):
        raise Refuse("training_mode=1: BN uses batch statistics, not the running mean/var")
    extra_outputs = [name for name in bn.output[1:] if name]
    if extra_outputs:
        raise Refuse(f"BN has training outputs {extra_outputs} (running/saved statistics) that other nodes may read")
    if opset < 7 and attribute(bn, "is_test", 0) == 0 and len(bn.output) > 1:
        raise Refuse("is_test=0 (training mode) in BatchNormalization-1/6")
    params = {}
    for role, name in zip(("scale", "bias", "mean", "var"), bn.input[1:5]):
        try:
            params[role] = ctx.constant(name)
        except NotConstant as why:
            raise Refuse(f"BN {role} is not a constant: {why}") from None
    if opset < 9 and attribute(bn, "spatial", 1) == 0 and any(p.ndim > 1 and p.size != p.shape[0]
                                                               for p in params.values()):
        raise Refuse("spatial=0 with per-element (non per-channel) parameters")
    try:
        scale, shift = bn_affine(params["scale"], params["bias"], params["mean"], params["var"],
                                 float(attribute(bn, "epsilon", 1e-5)))
    except FoldMathError as why:
        raise Refuse(str(why)) from None
    return BatchNorm(bn, scale, shift)


def exclusive_producer(bn: BatchNorm, ctx: GraphContext, op_types) -> Optional[onnx.NodeProto]:
    """The node producing BN's input if it is one of `op_types` (default domain), else None.

    Refuses when the producer's output is also read elsewhere: folding would change what that reader sees.
    """
    node = ctx.producer(bn.input)
    if node is None or node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
        return None
    require_exclusive(node, bn.input, ctx, bn.node)
    return node


def require_exclusive(node: onnx.NodeProto, tensor: str, ctx: GraphContext, reader: onnx.NodeProto) -> None:
    """Refuse unless `reader` is the only consumer of `tensor` and it is not a graph output."""
    if ctx.is_graph_output(tensor):
        raise Refuse(f"{node.op_type} output {tensor!r} is also a graph output")
    others = [user for user in ctx.users(tensor) if user is not reader]
    if others:
        labels = ", ".join(sorted({node_label(user) for user in others}))
        raise Refuse(f"{node.op_type} output {tensor!r} also feeds {labels}")


def constant_input(ctx: GraphContext, node: onnx.NodeProto, index: int, role: str) -> Optional[np.ndarray]:
    """The constant value of `node.input[index]`, None if the optional input is absent; Refuse if not constant."""
    if index >= len(node.input) or not node.input[index]:
        return None
    try:
        return ctx.constant(node.input[index])
    except NotConstant as why:
        raise Refuse(f"{node.op_type} {role} is not a constant: {why}") from None


def require_float(array: np.ndarray, role: str, node: onnx.NodeProto) -> None:
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise Refuse(f"{node.op_type} {role} has dtype {array.dtype.name}; only float weights can absorb a BN")


@dataclass
class ProducerEdit:
    """How a producer absorbs a per-output-channel affine map: its new constant inputs, attributes, extra nodes."""

    updates: List[InputUpdate] = field(default_factory=list)
    attributes: Dict[str, object] = field(default_factory=dict)
    inserted: List[onnx.NodeProto] = field(default_factory=list)
    rounding_error: float = 0.0


def constant_update(node: onnx.NodeProto, index: int, exact: np.ndarray, dtype, hint: str) -> (InputUpdate, float):
    """An InputUpdate holding `exact` cast to `dtype`, and the largest rounding error the cast made."""
    try:
        cast = cast_exact(exact, dtype)
    except FoldMathError as why:
        raise Refuse(f"{node.op_type} {hint}: {why}") from None
    return InputUpdate(node, index, cast, hint), max_rounding_error(exact, cast)


# Signature of a producer's fold: (node, ctx, scale, shift) -> ProducerEdit. shift may be None (scale only).
ProducerFold = Callable[[onnx.NodeProto, GraphContext, np.ndarray, Optional[np.ndarray]], ProducerEdit]


def tensor_hint(node: onnx.NodeProto, index: int, suffix: str) -> str:
    """A readable base name for a new tensor: the old input's name, else the node's, plus a suffix."""
    base = node.input[index] if index < len(node.input) and node.input[index] else (node.name or node.output[0])
    return f"{base}_{suffix}"


def is_op(node: Optional[onnx.NodeProto], op_types) -> bool:
    """Whether `node` exists and is one of `op_types` from the default ONNX domain."""
    return node is not None and node.op_type in op_types and node.domain in ("", "ai.onnx")


def per_channel_values(value: np.ndarray, rank: Optional[int], channels: int) -> Optional[np.ndarray]:
    """`value` as a float64 [channels] vector when, broadcast against a rank-`rank` tensor, it applies one number
    per channel of axis 1 and changes no shape: a scalar, [C] on rank 2, [C, 1, 1] or [1, C, 1, 1] on rank 4.
    None otherwise, and for any non-scalar when the rank is unknown."""
    if value.size == 1 and value.ndim <= (rank if rank is not None else 1):
        return np.full(channels, value.astype(np.float64).reshape(-1)[0])
    if rank is None or value.ndim > rank or rank < 2:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[1] == channels and all(d == 1 for i, d in enumerate(shape) if i != 1):
        return value.astype(np.float64).reshape(-1)
    return None


def linear_output_rank(node: onnx.NodeProto, weight: np.ndarray, ctx: GraphContext) -> Optional[int]:
    """Rank of a Conv/ConvTranspose (its weight's), Gemm (2) or MatMul (its data input's) output; None if unknown."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return weight.ndim
    if node.op_type == "Gemm":
        return 2
    return ctx.rank(node.input[0])


def linear_output_channels(node: onnx.NodeProto, weight: np.ndarray) -> int:
    """Size of axis 1 of a Conv/ConvTranspose/Gemm/MatMul output, from its weight."""
    if weight.ndim < 2:
        raise Refuse(f"{node.op_type} {node_label(node)!r} weight has rank {weight.ndim}")
    if node.op_type == "Conv":
        return weight.shape[0]
    if node.op_type == "ConvTranspose":
        return weight.shape[1] * int(attribute(node, "group", 1))
    if node.op_type == "Gemm":
        return weight.shape[0 if attribute(node, "transB", 0) else 1]
    return weight.shape[-1]


def shared_rank(ctx: GraphContext, *names: str) -> Optional[int]:
    """The rank of tensors known to share one (a BN's input and output): the first that any source knows."""
    for name in names:
        rank = ctx.rank(name)
        if rank is not None:
            return rank
    return None
