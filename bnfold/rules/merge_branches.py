"""Branch merging: parallel branches that read one tensor x and are summed by Add or Sum, or subtracted by Sub,
become one Conv (RepVGG, MobileOne, FastViT's RepMixer `mixer(x) - norm(x)` and other re-parameterizable blocks
exported in their training structure). Sub's second input is a negated branch: its map is x * -scale - shift.

A branch is a Conv reading x (its BN already folded into it, as the engine visits the sum after the branches), or
an identity: x itself; either may be followed by per-channel affine steps (the Mul + Add a standalone BN became, the
BN itself, or an exporter's `0 + conv`), each read by the next only. The
merged Conv is the earliest branch Conv with the summed kernel (rules.reparam); it takes over the sum's output name,
so readers and graph outputs are unchanged, and a BN after the sum then folds into it as usual. Each branch's output
must be read by the sum only; a Shape node may read it too (it sees only the shape), and then reads the sum's
output instead, which has the same shape: every merged branch gives the same output size (rules.reparam).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import onnx

from ..graph import Edit, GraphIndex, NotConstant, attribute, is_op, node_label
from ..report import BranchMerge
from .affine import compose_affine
from .base import (Refuse, Rule, constant_input, read_attribute, read_batchnorm, require_exclusive, set_exact,
                   tensor_hint)
from .chain import AFFINE, Candidate, data_input, walk
from .reparam import ConvBranch, MergeError, affine_after, identity_branch, merge
from .weights import read_plain_weight


SUMS = ("Add", "Sum", "Sub")


@dataclass
class Branch:
    """One summed input: `conv` (None for an identity branch) reading `source`, then per-channel affine `steps` (BNs,
    Mul / Add / Sub / Div by constants: a standalone BN's Mul + Add, an exporter's `0 + conv`), in data-flow order."""

    source: str
    conv: Optional[onnx.NodeProto]
    steps: List[onnx.NodeProto] = field(default_factory=list)
    sign: float = 1.0  # -1 for Sub's second input

    def describe(self) -> str:
        what = f"Conv {node_label(self.conv)!r}" if self.conv is not None else "identity"
        what = what if self.sign > 0 else f"minus {what}"
        if self.steps:
            what += " through " + ", ".join(f"{step.op_type} {node_label(step)!r}" for step in self.steps)
        return what


@dataclass
class Branches:
    """A sum whose every input is a branch of `source`, with at least one Conv."""

    node: onnx.NodeProto
    source: str
    branches: List[Branch]

    @property
    def convs(self) -> List[onnx.NodeProto]:
        return [branch.conv for branch in self.branches if branch.conv is not None]

    def describe(self) -> List[str]:
        return [branch.describe() for branch in self.branches]


def _step_input(node: onnx.NodeProto, index: GraphIndex) -> Optional[str]:
    """The data input of a per-channel affine step (an eval-mode BN, or Mul / Add / Sub / Div by a constant)."""
    if is_op(node, ("BatchNormalization",)):
        extra = [name for name in node.output[1:] if name]
        return node.input[0] if node.input and node.input[0] and not extra else None
    return data_input(node, index) if is_op(node, AFFINE) else None


def _branch(name: str, index: GraphIndex) -> Branch:
    """Walk up from a summed input through affine steps, each read by the next only, to a Conv read by them only
    (a branch Conv), or to the source: a tensor other nodes read too, or that no Conv or affine step produces."""
    found = walk(name, index, through=lambda node: _step_input(node, index), exclusive=True)
    top, name = found.top, found.name
    if not found.shared and is_op(top, ("Conv",)) and top.input and top.output[0] == name:
        return Branch(top.input[0], top, found.nodes)
    return Branch(name, None, found.nodes)


def candidate_branches(node: onnx.NodeProto, index: GraphIndex) -> Optional[Branches]:
    """The branches of an Add or Sub (two inputs) or Sum when all of them read one tensor and one is a Conv; None
    when the sum is no such block (a residual connection, a bias Add)."""
    if not is_op(node, SUMS) or len(node.input) < 2 or (node.op_type != "Sum" and len(node.input) != 2):
        return None
    inputs = list(node.input)
    if not all(inputs) or len(set(inputs)) != len(inputs) or any(index.is_constant(name) for name in inputs):
        return None
    branches = [_branch(name, index) for name in inputs]
    if node.op_type == "Sub":
        branches[1].sign = -1.0
    sources = {branch.source for branch in branches}
    if len(sources) != 1 or not any(branch.conv is not None for branch in branches):
        return None
    return Branches(node, sources.pop(), branches)


def _pads(conv: onnx.NodeProto, kernel, strides, dilations) -> List[int]:
    """Explicit pads (begins, then ends) of a Conv; SAME_* is resolved where it does not depend on the input size."""
    auto_pad = read_attribute(conv, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    rank = len(kernel)
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(s != 1 for s in strides):
            raise Refuse(f"Conv {node_label(conv)!r} has auto_pad={auto_pad} with strides {list(strides)}: its pads "
                         "depend on the input size")
        totals = [d * (k - 1) for k, d in zip(kernel, dilations)]
        small = [t // 2 for t in totals]
        large = [t - t // 2 for t in totals]
        return small + large if auto_pad == "SAME_UPPER" else large + small
    pads = [int(p) for p in (read_attribute(conv, "pads", None) or [0] * (2 * rank))]
    if len(pads) != 2 * rank:
        raise Refuse(f"Conv {node_label(conv)!r} has pads {pads} for a {rank}-D kernel")
    return pads


def _conv_branch(conv: onnx.NodeProto, index: GraphIndex) -> ConvBranch:
    weight = read_plain_weight(index, conv, 1, "weight")
    if weight.ndim < 3:
        raise Refuse(f"Conv {node_label(conv)!r} weight has rank {weight.ndim}; expected [C, C/group, k...]")
    rank = weight.ndim - 2
    kernel = tuple(weight.shape[2:])
    declared = read_attribute(conv, "kernel_shape", None)
    if declared is not None and tuple(declared) != kernel:
        raise Refuse(f"Conv {node_label(conv)!r} kernel_shape {list(declared)} differs from its weight {list(kernel)}")
    group = int(read_attribute(conv, "group", 1))
    if group < 1 or weight.shape[0] % group:
        raise Refuse(f"Conv {node_label(conv)!r} weight {list(weight.shape)} does not fit group={group}")
    strides = tuple(int(s) for s in (read_attribute(conv, "strides", None) or [1] * rank))
    dilations = tuple(int(d) for d in (read_attribute(conv, "dilations", None) or [1] * rank))
    bias = constant_input(index, conv, 2, "bias")
    bias = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64).reshape(-1)
    if bias.size != weight.shape[0]:
        raise Refuse(f"Conv {node_label(conv)!r} bias has {bias.size} values for {weight.shape[0]} output channels")
    pads = tuple(_pads(conv, kernel, strides, dilations))
    return ConvBranch(weight.astype(np.float64), bias, group, strides, dilations, pads)


def _channel_vector(value: np.ndarray, channels: int, rank: int, node: onnx.NodeProto) -> np.ndarray:
    """A constant that broadcasts along the channel axis (axis 1 of a rank-`rank` tensor) only, as [channels]."""
    value = np.asarray(value, dtype=np.float64)
    shape = (1,) * (rank - value.ndim) + value.shape if value.ndim <= rank else None
    if shape is None or shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        raise Refuse(f"{node.op_type} {node_label(node)!r} constant of shape {list(value.shape)} is not per channel "
                     f"of a {channels}-channel input")
    return np.broadcast_to(value.reshape(-1), (channels,))


def _steps_map(steps: List[onnx.NodeProto], index: GraphIndex, channels: int, rank: int):
    """(scale, shift) per channel of a branch's affine steps, composed in float64."""
    scale, shift = np.ones(channels), np.zeros(channels)
    for step in steps:
        if step.op_type == "BatchNormalization":
            bn = read_batchnorm(step, index)
            if bn.channels != channels:
                raise Refuse(f"BN {node_label(step)!r} has {bn.channels} channels; the branches have {channels}")
            scale, shift = scale * bn.scale, shift * bn.scale + bn.shift
            continue
        if step.op_type == "Neg":
            scale, shift = -scale, -shift
            continue
        data = list(step.input).index(data_input(step, index))
        try:
            value = index.constant(step.input[1 - data])
        except NotConstant as why:
            raise Refuse(str(why)) from None
        vector = _channel_vector(value, channels, rank, step)
        scale, shift = compose_affine(scale, shift, step.op_type, vector, data_first=data == 0)
    return scale, shift


def _rewire_shape_readers(edit: Edit, removed: List[onnx.NodeProto], index: GraphIndex, total: onnx.NodeProto,
                          merged: str) -> None:
    """Point what else reads a removed branch tensor at the merged output. Only Shape nodes can be left (a value
    reader stops the branch walk, or require_exclusive refuses it), and every branch tensor has the sum's shape."""
    gone = {id(node) for node in removed} | {id(total)}
    for node in removed:
        if any(id(user) not in gone for user in index.users(node.output[0])):
            edit.replace_uses(node.output[0], merged)  # planned after the removals: only the Shape readers move


def plan(branches: Branches, index: GraphIndex) -> Edit:
    """The merge of the branches into their earliest Conv; Refuse with the reason."""
    node = branches.node
    for branch in branches.branches:
        if branch.conv is not None:
            reader = branch.steps[0] if branch.steps else node
            require_exclusive(index, branch.conv.output[0], reader, f"Conv {node_label(branch.conv)!r}")
    convs = sorted(branches.convs, key=lambda conv: index.editor.key[id(conv)])
    dtypes = {index.dtype(conv.input[1]) for conv in convs}
    if len(dtypes) > 1:
        raise Refuse(f"Conv branches have weight dtypes {sorted(str(d) for d in dtypes)}")
    parts = {id(conv): _conv_branch(conv, index) for conv in convs}
    first = parts[id(convs[0])]
    channels, rank = first.out_channels, first.weight.ndim
    if any(branch.conv is None for branch in branches.branches) and first.in_channels != channels:
        raise Refuse(f"an identity branch needs as many input as output channels; the Conv branches map "
                     f"{first.in_channels} to {channels}")
    summed = []
    for branch in branches.branches:
        scale, shift = _steps_map(branch.steps, index, channels, rank)
        scale, shift = scale * branch.sign, shift * branch.sign
        if branch.conv is None:
            summed.append(identity_branch(scale, shift, rank - 2))
        else:
            summed.append(affine_after(parts[id(branch.conv)], scale, shift))
    try:
        merged = merge(summed)
    except MergeError as why:
        raise Refuse(str(why)) from None
    into = convs[0]
    weight_dtype = index.dtype(into.input[1])
    bias_dtype = index.dtype(into.input[2]) if len(into.input) > 2 and into.input[2] else weight_dtype
    edit = Edit(into=[into], output_axes={node.output[0]: 1})
    set_exact(edit, into, 1, merged.weight, weight_dtype, tensor_hint(into, 1, "merged"))
    set_exact(edit, into, 2, merged.bias, bias_dtype, tensor_hint(into, 2, "merged"))
    if read_attribute(into, "auto_pad", None) is not None:
        edit.set_attribute(into, "auto_pad", "NOTSET")
    edit.set_attribute(into, "pads", list(merged.pads))
    edit.set_attribute(into, "kernel_shape", list(merged.kernel))
    edit.set_attribute(into, "dilations", list(merged.dilations))
    edit.set_attribute(into, "group", merged.group)
    removed = [*convs[1:], *(step for branch in branches.branches for step in branch.steps)]
    for gone in removed:
        edit.remove(gone)
    edit.remove(node)
    _rewire_shape_readers(edit, removed, index, node, node.output[0])
    edit.rename(into.output[0], node.output[0])
    return edit


class MergeBranches(Rule):
    """An Add / Sum of parallel branches of one tensor becomes one Conv. A sum of anything else (a residual
    connection, a bias) is no match and is not reported."""

    name = "merge_branches"
    description = ("Conv branches of one input (and the input itself, or a per-channel affine of it) summed by "
                   "Add / Sum or subtracted by Sub -> one Conv (RepVGG, MobileOne, FastViT RepMixer)")
    candidates = SUMS
    report = "merges"

    def match(self, candidate: Candidate):
        try:
            return candidate_branches(candidate.node, candidate.index)
        except (Refuse, NotConstant):
            return None

    def describe(self, branches) -> str:
        return "one Conv could replace the branches"

    def record(self, candidate: Candidate, branches) -> BranchMerge:
        node = candidate.node
        return BranchMerge(node=node_label(node), output=node.output[0], graph=candidate.index.path,
                           branches=branches.describe())

    def plan(self, branches, candidate: Candidate) -> Edit:
        return plan(branches, candidate.index)

    def applied(self, merge, branches, edit: Edit, decisions) -> None:
        into = edit.into[0]
        merge.merged, merge.into, merge.rounding_error = True, node_label(into), edit.rounding_error
        merge.kernel, merge.group = list(attribute(into, "kernel_shape")), int(attribute(into, "group"))
        # A BN no rule could fold (an identity BN of a tensor other nodes read) that the merge absorbed is folded.
        merged = {(merge.graph, step.output[0]) for branch in branches.branches for step in branch.steps
                  if step.op_type == "BatchNormalization"}
        for decision in decisions:
            if not decision.folded and (decision.graph, decision.output) in merged:
                decision.folded, decision.reason, decision.rule = True, None, self.name
                decision.into, decision.into_op = merge.into, "Conv"
                decision.local_error = merge.local_error


RULE = MergeBranches()
