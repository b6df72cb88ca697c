"""What every folding rule shares: reading a BatchNormalization, refusing with a reason, building updates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx

from ..graph import GraphContext, InputUpdate, NotConstant, attribute, node_label
from ..math import FoldMathError, bn_affine, cast_exact, max_rounding_error


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
