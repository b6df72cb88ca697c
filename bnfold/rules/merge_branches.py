"""Branch merging: parallel branches that read one tensor x and are summed by Add or Sum become one Conv (RepVGG,
MobileOne and other re-parameterizable blocks exported in their training structure).

A branch is a Conv reading x (its BN already folded into it, as the engine visits the sum after the branches), or
an identity: x itself, or a per-channel affine of x (the Mul + Add a standalone BN became, or the BN itself). The
merged Conv is the earliest branch Conv with the summed kernel (rules.reparam); it takes over the sum's output name,
so readers and graph outputs are unchanged, and a BN after the sum then folds into it as usual. Each branch's output
must be read by the sum only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import onnx

from ..graph import Edit, GraphIndex, NotConstant, is_op, node_label
from .base import Refuse, constant_input, read_attribute, read_batchnorm, require_exclusive, set_exact, tensor_hint
from .reparam import ConvBranch, MergeError, identity_branch, merge
from .weights import read_plain_weight

NAME = "merge_branches"
DESCRIPTION = ("Conv branches of one input (and the input itself, or a per-channel affine of it) summed by Add / Sum "
               "-> one Conv (RepVGG, MobileOne)")

SUMS = ("Add", "Sum")


@dataclass
class Identity:
    """An identity branch: x itself (no nodes), or x through a BN or per-channel Mul / Add nodes."""

    nodes: List[onnx.NodeProto] = field(default_factory=list)

    def describe(self) -> str:
        if not self.nodes:
            return "identity"
        return "identity through " + ", ".join(f"{n.op_type} {node_label(n)!r}" for n in self.nodes)


@dataclass
class Branches:
    """A sum whose every input is a branch of `source`, with at least one Conv."""

    node: onnx.NodeProto
    source: str
    convs: List[onnx.NodeProto]
    identities: List[Identity]

    def describe(self) -> List[str]:
        return [f"Conv {node_label(conv)!r}" for conv in self.convs] + [i.describe() for i in self.identities]


def _constant_operand(node: onnx.NodeProto, index: GraphIndex) -> Optional[int]:
    """The position of the constant operand of a binary node whose other operand is not constant, else None."""
    if len(node.input) != 2 or not all(node.input):
        return None
    constant = [index.is_constant(name) for name in node.input]
    return constant.index(True) if constant.count(True) == 1 else None


def _affine_nodes(name: str, index: GraphIndex) -> Optional[List[onnx.NodeProto]]:
    """[Mul], [Add] or [Mul, Add] by constants ending at `name`, as a standalone BN becomes; None otherwise."""
    node = index.producer(name)
    if not is_op(node, ("Mul", "Add")) or _constant_operand(node, index) is None:
        return None
    nodes = [node]
    if node.op_type == "Add":
        before = index.producer(node.input[1 - _constant_operand(node, index)])
        if is_op(before, ("Mul",)) and _constant_operand(before, index) is not None:
            nodes.insert(0, before)
    return nodes


def _data_input(node: onnx.NodeProto, index: GraphIndex) -> str:
    if node.op_type == "BatchNormalization":
        return node.input[0]
    return node.input[1 - _constant_operand(node, index)]


def candidate(node: onnx.NodeProto, index: GraphIndex) -> Optional[Branches]:
    """The branches of an Add (two inputs) or Sum when all of them read one tensor and one is a Conv; None when the
    sum is no such block (a residual connection, a bias Add)."""
    if not is_op(node, SUMS) or len(node.input) < 2 or (node.op_type == "Add" and len(node.input) != 2):
        return None
    inputs = list(node.input)
    if not all(inputs) or len(set(inputs)) != len(inputs) or any(index.is_constant(name) for name in inputs):
        return None
    convs, identities, sources = [], [], set()
    for name in inputs:
        producer = index.producer(name)
        if is_op(producer, ("Conv",)) and producer.input and producer.output[0] == name:
            convs.append(producer)
            sources.add(producer.input[0])
            continue
        if is_op(producer, ("BatchNormalization",)) and producer.output[0] == name and producer.input[0]:
            nodes = [producer]
        else:
            nodes = _affine_nodes(name, index) or []
        identities.append(Identity(nodes))
        sources.add(_data_input(nodes[0], index) if nodes else name)
    if not convs or len(sources) != 1:
        return None
    return Branches(node, sources.pop(), convs, identities)


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


def _identity_map(identity: Identity, index: GraphIndex, channels: int, rank: int):
    """(scale, shift) per channel of an identity branch."""
    scale, shift = np.ones(channels), np.zeros(channels)
    for node in identity.nodes:
        if node.op_type == "BatchNormalization":
            bn = read_batchnorm(node, index)
            if bn.channels != channels:
                raise Refuse(f"BN {node_label(node)!r} has {bn.channels} channels; the Conv branches have {channels}")
            scale, shift = bn.scale, bn.shift
            continue
        try:
            value = index.constant(node.input[_constant_operand(node, index)])
        except NotConstant as why:
            raise Refuse(str(why)) from None
        vector = _channel_vector(value, channels, rank, node)
        if node.op_type == "Mul":
            scale, shift = scale * vector, shift * vector
        else:
            shift = shift + vector
    return scale, shift


def plan(branches: Branches, index: GraphIndex) -> Edit:
    """The merge of the branches into their earliest Conv; Refuse with the reason."""
    node = branches.node
    convs = sorted(branches.convs, key=lambda conv: index.editor.key[id(conv)])
    for conv in convs:
        require_exclusive(index, conv.output[0], node, f"Conv {node_label(conv)!r}")
    for identity in branches.identities:
        for step, following in zip(identity.nodes, identity.nodes[1:] + [node]):
            require_exclusive(index, step.output[0], following, f"{step.op_type} {node_label(step)!r}")
    dtypes = {index.dtype(conv.input[1]) for conv in convs}
    if len(dtypes) > 1:
        raise Refuse(f"Conv branches have weight dtypes {sorted(str(d) for d in dtypes)}")
    conv_branches = [_conv_branch(conv, index) for conv in convs]
    channels, rank = conv_branches[0].out_channels, conv_branches[0].weight.ndim
    if branches.identities and conv_branches[0].in_channels != channels:
        raise Refuse(f"an identity branch needs as many input as output channels; the Conv branches map "
                     f"{conv_branches[0].in_channels} to {channels}")
    identity_branches = [identity_branch(*_identity_map(identity, index, channels, rank), rank - 2)
                         for identity in branches.identities]
    try:
        merged = merge(conv_branches + identity_branches)
    except MergeError as why:
        raise Refuse(str(why)) from None
    first = convs[0]
    weight_dtype = index.dtype(first.input[1])
    bias_dtype = index.dtype(first.input[2]) if len(first.input) > 2 and first.input[2] else weight_dtype
    edit = Edit(into=[first], output_axes={node.output[0]: 1})
    set_exact(edit, first, 1, merged.weight, weight_dtype, tensor_hint(first, 1, "merged"))
    set_exact(edit, first, 2, merged.bias, bias_dtype, tensor_hint(first, 2, "merged"))
    if read_attribute(first, "auto_pad", None) is not None:
        edit.set_attribute(first, "auto_pad", "NOTSET")
    edit.set_attribute(first, "pads", list(merged.pads))
    edit.set_attribute(first, "kernel_shape", list(merged.kernel))
    edit.set_attribute(first, "dilations", list(merged.dilations))
    edit.set_attribute(first, "group", merged.group)
    for other in convs[1:]:
        edit.remove(other)
    for identity in branches.identities:
        for step in identity.nodes:
            edit.remove(step)
    edit.remove(node)
    edit.rename(first.output[0], node.output[0])
    return edit
