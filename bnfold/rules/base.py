"""What the rules share: refusing with a reason, reading a BatchNormalization, reading and writing constants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import onnx

from ..graph import Edit, GraphIndex, NotConstant, attribute, node_label
from .affine import FoldMathError, bn_affine, cast_exact, max_rounding_error


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


def read_batchnorm(bn: onnx.NodeProto, index: GraphIndex) -> BatchNorm:
    """Check that a BN is foldable at all (eval mode, per-channel constant finite parameters); its affine map."""
    opset = index.model.opset
    if len(bn.input) < 5 or not all(bn.input[:5]):
        raise Refuse("BatchNormalization needs 5 inputs (X, scale, B, mean, var)")
    try:
        if attribute(bn, "training_mode", 0):
            raise Refuse("training_mode=1: BN uses batch statistics, not the running mean/var")
        extra_outputs = [name for name in bn.output[1:] if name]
        if extra_outputs:
            raise Refuse(f"BN has training outputs {extra_outputs} (running/saved statistics) that other nodes "
                         "may read")
        if opset < 7 and attribute(bn, "is_test", 0) == 0 and len(bn.output) > 1:
            raise Refuse("is_test=0 (training mode) in BatchNormalization-1/6")
        if attribute(bn, "spatial", 1) == 0:
            raise Refuse("spatial=0: the parameters are per element, not per channel (ONNX Runtime rejects "
                         "per-channel parameters there)")
        epsilon = float(attribute(bn, "epsilon", 1e-5))
    except NotConstant as why:
        raise Refuse(str(why)) from None
    params = {}
    for role, name in zip(("scale", "bias", "mean", "var"), bn.input[1:5]):
        try:
            params[role] = index.constant(name)
        except NotConstant as why:
            raise Refuse(f"BN {role} is not a constant: {why}") from None
        if params[role].ndim > 1:
            raise Refuse(f"BN {role} has shape {list(params[role].shape)}; BatchNormalization takes [C]")
    try:
        scale, shift = bn_affine(params["scale"], params["bias"], params["mean"], params["var"], epsilon)
    except FoldMathError as why:
        raise Refuse(str(why)) from None
    return BatchNorm(bn, scale, shift)


def rank_unknown(name: str) -> str:
    """What is missing when a rule needs the rank of tensor `name` and the model does not say it, and what helps."""
    return (f"the rank of {name!r} is unknown: the model declares no shape for it and ONNX shape inference found "
            "none; declaring its shape in value_info (or fixing the graph inputs' shapes) would let it fold")


def constant_input(index: GraphIndex, node: onnx.NodeProto, position: int, role: str) -> Optional[np.ndarray]:
    """The constant value of `node.input[position]`, None if the optional input is absent; Refuse if not constant."""
    if position >= len(node.input) or not node.input[position]:
        return None
    try:
        return index.constant(node.input[position])
    except NotConstant as why:
        raise Refuse(f"{node.op_type} {role} is not a constant: {why}") from None


def read_attribute(node: onnx.NodeProto, name: str, default=None):
    """attribute(), with a function-attribute reference turned into a refusal."""
    try:
        return attribute(node, name, default)
    except NotConstant as why:
        raise Refuse(str(why)) from None


def require_float(array: np.ndarray, role: str, node: onnx.NodeProto) -> None:
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise Refuse(f"{node.op_type} {role} has dtype {array.dtype.name}; only float weights can absorb a BN")


def set_exact(edit: Edit, node: onnx.NodeProto, position: int, exact: np.ndarray, dtype, hint: str) -> None:
    """Plan `node.input[position]` = `exact` (float64) cast to `dtype`; refuse when the cast overflows."""
    try:
        cast = cast_exact(exact, dtype)
    except FoldMathError as why:
        raise Refuse(f"{node.op_type} {node_label(node)!r} {hint}: {why}") from None
    edit.set_constant(node, position, cast, hint)
    edit.rounding_error = max(edit.rounding_error, max_rounding_error(exact, cast))


def tensor_hint(node: onnx.NodeProto, position: int, suffix: str) -> str:
    """A readable base name for a new tensor: the old input's name, else the node's, plus a suffix."""
    base = node.input[position] if position < len(node.input) and node.input[position] else (
        node.name or node.output[0])
    return f"{base}_{suffix}"


def require_exclusive(index: GraphIndex, tensor: str, reader: onnx.NodeProto, what: str) -> None:
    """Refuse unless `reader` is the only node reading `tensor`'s values and it is not a graph output."""
    if index.is_graph_output(tensor):
        raise Refuse(f"{what} output {tensor!r} is also a graph output")
    others = [user for user in index.value_readers(tensor) if user is not reader]
    if others:
        labels = ", ".join(sorted({node_label(user) for user in others}))
        raise Refuse(f"{what} output {tensor!r} also feeds {labels}")


class Skipped(Refuse):
    """A rule matched, but the op it would fold into is one the user skipped (--skip): the reason names it."""


class Rule:
    """A way to fold: the engine offers it every node of `candidates` (op types), in RULES order, as a
    rules.chain.Candidate.

    match(candidate) -> Match, or None when the node is not its pattern (nothing to say), or Refuse(why) when it is
    but cannot fold; plan(match, candidate) -> Edit, or Refuse(why). Neither changes the graph. `report` names the
    report list its records go to ("decisions": one per BN, made for every BN; "decomposed" and "merges": made
    for each match). An `opt_in` rule plans, but its edit is applied only when the options ask for it; otherwise
    `hint` says what it would do. `rewrites_into`: the nodes the fold goes into keep their names but not their
    values (what the end-to-end check must not compare by name)."""

    name = ""
    description = ""
    candidates: Tuple[str, ...] = ("BatchNormalization",)
    report = "decisions"
    opt_in = False
    hint = ""
    rewrites_into = False

    def match(self, candidate: "Candidate"):
        raise NotImplementedError

    def plan(self, match, candidate: "Candidate") -> Edit:
        raise NotImplementedError

    def describe(self, match) -> str:
        """What the match would fold into, for the reason given when this rule is skipped."""
        raise NotImplementedError

    def record(self, candidate: "Candidate", match):
        """The report record of a match (rules whose report is not "decisions")."""
        raise NotImplementedError

    def applied(self, record, match, edit: Edit, decisions) -> None:
        """Fill in `record` once `edit` is applied; `decisions` are the BN decisions made so far."""
        record.folded, record.reason, record.rule = True, None, self.name
        record.into = ", ".join(node_label(node) for node in edit.into)
        record.into_op = "+".join(node.op_type for node in edit.into)
        record.through = [node.op_type for node in edit.through]
        record.rounding_error = edit.rounding_error
