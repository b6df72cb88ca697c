"""Forward folds through attention: a BN after softmax(Q Kᵀ) @ V (BoTNet's BottleneckAttn, global self-attention
followed by a BN) folds into the V rows of the qkv projection.

Why it is exact: MatMul(A, V) with A = Softmax over its last axis, the axis MatMul contracts, has rows that sum
to 1, so for a map constant along V's rows, A @ (V * s + t) = (A @ V) * s + t. The rule proves both facts from the
graph: A comes from a Softmax on its last axis (opset < 13: the flattened trailing block, which is the last axis
only when axis = rank - 1), and every column of V holds one channel of the producer's output.

Heads spread a channel over two axes (a qkv Conv [B, 3C, H, W] becomes [B * heads, C / heads, HW]), which the
one-axis channel walk cannot follow, so this rule follows channels by labels instead: a tensor of producer-channel
numbers, in the producer output's static shape, is pushed through the data-movement ops (Split, Reshape,
Transpose, (Un)Squeeze, Flatten, Identity) to V, through the MatMul (each column's single label), and on to the
BN, which must see each of its channels come from exactly one V channel, a different one each. After the
data-movement ops, the usual look-through chain (an AvgPool2d, per-channel steps) may follow before the BN.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import onnx

from ..graph import Edit, GraphIndex, NotConstant, is_op, node_label
from .base import Refuse, Rule, Skipped, read_attribute, require_exclusive
from .chain import Candidate, replace_batchnorm, require_single_readers, track
from .forward import producer_channels
from .producers import PRODUCERS
from .split_forward import split_sizes
from .views import Channels, axes_of, sizes_of

MOVES = ("Split", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
MAX_LABELS = 1 << 26  # elements of the label tensor (int32): 256 MiB at most


def _static(index: GraphIndex, name: str) -> Tuple[int, ...]:
    dims = index.dims(name)
    if dims is None or any(d is None or d <= 0 for d in dims):
        raise Refuse(f"the attention fold follows channels by their positions and needs the static shape of {name!r} "
                     f"(it has {dims}); export with a fixed input shape")
    return tuple(int(d) for d in dims)


def _move(node: onnx.NodeProto, index: GraphIndex, labels: np.ndarray, output: str) -> np.ndarray:
    """What a data-movement node does to a label tensor (its output `output`)."""
    op = node.op_type
    if op == "Identity":
        return labels
    if op == "Transpose":
        perm = read_attribute(node, "perm", None)
        return np.transpose(labels, None if perm is None else [int(p) for p in perm])
    if op == "Split":
        axis = int(read_attribute(node, "axis", 0)) % labels.ndim
        sizes = split_sizes(node, index, labels.shape[axis])
        part = list(node.output).index(output)
        return np.take(labels, range(sum(sizes[:part]), sum(sizes[:part + 1])), axis=axis)
    if op == "Flatten":
        axis = int(read_attribute(node, "axis", 1)) % (labels.ndim + 1)
        return labels.reshape(int(np.prod(labels.shape[:axis])), -1)
    if op == "Squeeze":
        axes = axes_of(node, index)
        return np.squeeze(labels, axis=None if not axes else tuple(a % labels.ndim for a in axes))
    if op == "Unsqueeze":
        axes = axes_of(node, index) or []
        rank = labels.ndim + len(axes)
        return np.expand_dims(labels, tuple(sorted(a % rank for a in axes)))
    try:  # Reshape
        target = [int(d) for d in index.constant(node.input[1]).reshape(-1)]
    except (NotConstant, IndexError) as why:
        raise Refuse(f"Reshape {node_label(node)!r} target is not a constant: {why}") from None
    copies = not read_attribute(node, "allowzero", 0)
    target = [labels.shape[i] if d == 0 and copies else d for i, d in enumerate(target)]
    try:
        return labels.reshape(target)
    except ValueError:
        raise Refuse(f"Reshape {node_label(node)!r} target {target} does not fit {list(labels.shape)}") from None


def _moves_up(name: str, index: GraphIndex) -> Tuple[Optional[onnx.NodeProto], List[Tuple[onnx.NodeProto, str]]]:
    """(the node above the data-movement ops that lead to `name`, [(each such node, the output taken)] in data-flow
    order)."""
    moves = []
    node = index.producer(name)
    while is_op(node, MOVES) and node.input and node.input[0]:
        moves.append((node, name))
        name = node.input[0]
        node = index.producer(name)
    return node, moves[::-1]


def find(candidate: Candidate):
    """(producer, moves to V, softmax, the attention MatMul) when the BN's walk up stops at MatMul(Softmax, V)."""
    index, matmul = candidate.index, candidate.walk.top
    if not is_op(matmul, ("MatMul",)) or len(matmul.input) != 2 or index.is_constant(matmul.input[1]):
        return None
    softmax = index.producer(matmul.input[0])
    if not is_op(softmax, ("Softmax",)):
        return None
    producer, moves = _moves_up(matmul.input[1], index)
    if not is_op(producer, PRODUCERS):
        return None
    return producer, moves, softmax, matmul


def _labels_at_bn(found, candidate: Candidate, prefix: List[onnx.NodeProto]) -> np.ndarray:
    """Each BN channel's producer channel, or Refuse."""
    producer, moves, softmax, matmul = found
    index = candidate.index
    channels = producer_channels(producer, index)
    shape = _static(index, producer.output[0])
    if int(np.prod(shape)) > MAX_LABELS:
        raise Refuse(f"{producer.op_type} {node_label(producer)!r} output {list(shape)} is too large to follow its "
                     f"channels by labels (over {MAX_LABELS} elements)")
    labels = np.arange(shape[channels.axis], dtype=np.int32)
    labels = np.broadcast_to(labels.reshape([-1 if a == channels.axis else 1 for a in range(len(shape))]), shape)
    for node, output in moves:
        labels = _move(node, index, labels, output)
    if labels.ndim < 2 or not np.all(labels == labels[..., :1, :]):
        raise Refuse(f"a column of V ({matmul.input[1]!r}) mixes channels of {producer.op_type} "
                     f"{node_label(producer)!r}, so a per-channel map does not commute with the attention")
    weights = _static(index, softmax.output[0])
    batch = np.broadcast_shapes(weights[:-2], labels.shape[:-2])
    labels = np.broadcast_to(labels[..., :1, :], batch + (weights[-2], labels.shape[-1]))
    for node in prefix:
        labels = _move(node, index, labels, node.output[0])
    if labels.ndim < 2 or labels.shape[1] != candidate.bn.channels:
        raise Refuse(f"the attention output reaches the BN with shape {list(labels.shape)}, not "
                     f"{candidate.bn.channels} channels on axis 1")
    per_channel = np.moveaxis(labels, 1, 0).reshape(labels.shape[1], -1)
    if not np.all(per_channel == per_channel[:, :1]):
        raise Refuse("a BN channel receives values of several V channels (the heads' reshape does not keep them)")
    mapping = per_channel[:, 0]
    if len(set(mapping.tolist())) != mapping.size:
        raise Refuse("two BN channels receive the same V channel")
    return mapping


def plan(found, candidate: Candidate) -> Edit:
    producer, moves, softmax, matmul = found
    bn, index, nodes = candidate.bn, candidate.index, candidate.walk.nodes
    rank = len(_static(index, softmax.output[0]))
    axis = int(read_attribute(softmax, "axis", -1 if index.model.opset >= 13 else 1))
    if axis % rank != rank - 1:
        raise Refuse(f"Softmax {node_label(softmax)!r} normalizes axis {axis} of rank {rank}, not the last axis the "
                     "MatMul sums over, so its rows need not sum to 1")
    require_exclusive(index, producer.output[0], moves[0][0] if moves else matmul,
                      f"{producer.op_type} {node_label(producer)!r}")
    for (node, output), following in zip(moves, [move for move, _ in moves[1:]] + [matmul]):
        require_exclusive(index, output, following, f"{node.op_type} {node_label(node)!r}")
    require_exclusive(index, matmul.output[0], nodes[0] if nodes else bn.node, f"MatMul {node_label(matmul)!r}")
    require_single_readers(nodes + [bn.node], index)
    views = 0
    while views < len(nodes) and is_op(nodes[views], MOVES[1:]):
        views += 1
    why = Refuse(f"the attention output {matmul.output[0]!r} does not reach the BN with its channels on axis 1")
    for start in range(views + 1):  # the fewest label moves after which the channel walk takes over
        tensor = nodes[start - 1].output[0] if start else matmul.output[0]
        dims = sizes_of(index.dims(tensor), index.rank(tensor))
        if dims is None or len(dims) < 2 or not dims[1] == bn.channels:
            continue
        try:
            arrived, chain = track(nodes[start:], index, Channels(bn.channels, dims, 1), moved=(bn.scale, bn.shift))
            if arrived.axis != 1:
                continue
            mapping = _labels_at_bn(found, candidate, nodes[:start])
            break
        except Refuse as refused:
            why = refused
    else:
        raise why
    count = producer_channels(producer, index).count
    scale, shift = np.ones(count), np.zeros(count)
    scale[mapping] = chain.scale * bn.scale
    shift[mapping] = chain.shift * bn.scale + bn.shift
    edit = Edit(into=[producer], through=[*(node for node, _ in moves), softmax, matmul, *nodes],
                output_axes={bn.output: 1})
    PRODUCERS[producer.op_type].forward(producer, index, scale, shift, edit)
    replace_batchnorm(edit, nodes, index, matmul.output[0], bn)
    return edit


class Attention(Rule):
    """A BN after softmax(Q Kᵀ) @ V: the V rows of the projection that computes V absorb it."""

    name = "attention"
    description = ("Conv / Gemm / MatMul -> [Split / Reshape / Transpose ...] -> V; MatMul(Softmax(last axis), V) "
                   "-> [views, look-through chain] -> BatchNormalization (BoTNet): softmax rows sum to 1, so the V "
                   "rows absorb it")
    rewrites_into = True

    def match(self, candidate: Candidate):
        found = find(candidate)
        if found is not None and found[0].op_type not in candidate.allowed:
            raise Skipped(f"{self.describe(found)}, but rule {PRODUCERS[found[0].op_type].skip_name!r} is skipped")
        return found

    def describe(self, found) -> str:
        return f"the V rows of {found[0].op_type} {node_label(found[0])!r} could absorb it"

    def plan(self, found, candidate: Candidate) -> Edit:
        return plan(found, candidate)


RULE = Attention()
