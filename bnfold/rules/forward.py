"""Forward folds: a per-channel affine map after a producer (a BN, or a decomposed BN's Mul/Add chain) is absorbed
by the producer's weights, across any look-through chain between them (rules.chain).

The producer's output channels must reach the map's channel axis with every element in its own channel; every
tensor of the chain must be read by the next node only. The chain's Mul/Add/Sub/Div nodes disappear with the map;
its views and averages stay, and the last node before the map takes over the map's output name.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import onnx

from ..graph import Edit, GraphIndex, is_op, node_label
from .base import Refuse, Rule, Skipped, rank_unknown, read_attribute, require_exclusive
from .chain import Candidate, bypass_affine, replace_batchnorm, require_single_readers, track
from .views import Channels, sizes_of
from .producers import PRODUCERS, Producer



def producer_channels(producer: onnx.NodeProto, index: GraphIndex) -> Channels:
    """Where the producer's output channels are, from its weights and (scoped) declared or inferred dims."""
    entry = PRODUCERS[producer.op_type]
    count = entry.output_channels(producer, index)
    rank = entry.output_rank(producer, index)
    dims = sizes_of(index.dims(producer.output[0]), rank)
    axis = entry.output_channel_axis(len(dims)) if dims is not None else None
    if dims is not None:
        if not 0 <= axis < len(dims):
            raise Refuse(f"{producer.op_type} {node_label(producer)!r} output has rank {len(dims)}")
        dims[axis] = type(dims[axis])(count)
    return Channels(count, dims, axis)


def plan(producer: onnx.NodeProto, nodes: List[onnx.NodeProto], index: GraphIndex, end: onnx.NodeProto,
         scale: Optional[np.ndarray], shift: Optional[np.ndarray]) -> Edit:
    """The fold of `producer -> nodes -> end` where `end` is a BN with map (scale, shift) on axis 1, or (scale None)
    the last node of `nodes` itself, whose map the chain already holds."""
    entry: Producer = PRODUCERS[producer.op_type]
    first_reader = nodes[0] if nodes else end
    require_exclusive(index, producer.output[0], first_reader, f"{producer.op_type} {node_label(producer)!r}")
    chain_nodes = nodes + ([end] if scale is not None else [])
    require_single_readers(chain_nodes, index)
    channels, chain = track(nodes, index, producer_channels(producer, index),
                            moved=None if scale is None else (scale, shift))
    if scale is not None:
        if channels.axis is None:
            conflict = index.type_conflict(producer.input[0]) or index.type_conflict(producer.output[0])
            raise Refuse(conflict or f"BN's channel axis cannot be matched to the {producer.op_type} output's "
                         f"channels: {rank_unknown(producer.output[0])}")
        if channels.axis != 1:
            raise Refuse(f"BN normalizes axis 1, but the {producer.op_type} output's channels arrive on axis "
                         f"{channels.axis} (rank {len(channels.dims)})")
        if scale.size != channels.count:
            raise Refuse(f"channel mismatch: {producer.op_type} has {channels.count} output channels, BN has "
                         f"{scale.size}")
        total_scale, total_shift = chain.scale * scale, chain.shift * scale + shift
    else:
        total_scale, total_shift = chain.scale, chain.shift
    edit = Edit(into=[producer], through=list(nodes), output_axes={end.output[0]: channels.axis})
    inserted = entry.forward(producer, index, total_scale, total_shift, edit)
    kept = bypass_affine(edit, nodes, index, (inserted or producer).output[0])
    output = end.output[0]
    if scale is not None:
        edit.remove(end)
    edit.rename(kept, output)
    return edit


def plan_concat(concat: onnx.NodeProto, nodes: List[onnx.NodeProto], index: GraphIndex, bn, allowed) -> Edit:
    """The fold of `Concat(producers, axis=channels) -> nodes -> BN` (timm's MixedConv2d): each producer absorbs
    its own slice of the BN's map. Every Concat input must come straight from an op of the producer table, read
    by the Concat alone."""
    producers = [index.producer(name) for name in concat.input]
    if len(set(concat.input)) != len(concat.input):
        raise Refuse(f"Concat {node_label(concat)!r} reads one tensor twice")
    for name, producer in zip(concat.input, producers):
        if not is_op(producer, allowed):
            what = f"{producer.op_type} node {node_label(producer)!r}" if producer is not None else "no node"
            raise Refuse(f"Concat {node_label(concat)!r} input {name!r} comes from {what}, which cannot absorb a "
                         "slice of the BN")
        require_exclusive(index, name, concat, f"{producer.op_type} {node_label(producer)!r}")
    require_exclusive(index, concat.output[0], nodes[0] if nodes else bn.node, f"Concat {node_label(concat)!r}")
    require_single_readers(nodes + [bn.node], index)
    parts = [producer_channels(producer, index) for producer in producers]
    ranks = {len(part.dims) for part in parts if part.dims is not None}
    if len(ranks) != 1 or len(ranks) == 1 and any(part.dims is None for part in parts):
        unknown = [name for name, part in zip(concat.input, parts) if part.dims is None]
        raise Refuse(f"Concat {node_label(concat)!r}'s inputs cannot be matched to its axis: "
                     + (rank_unknown(unknown[0]) if unknown else f"they have ranks {sorted(ranks)}"))
    rank = ranks.pop()
    axis = int(read_attribute(concat, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    if any(part.axis != axis for part in parts):
        raise Refuse(f"Concat {node_label(concat)!r} joins along axis {axis}, not along its inputs' channels")
    count = sum(part.count for part in parts)
    dims = sizes_of(index.dims(concat.output[0]), rank)
    dims[axis] = type(dims[axis])(count)
    channels, chain = track(nodes, index, Channels(count, dims, axis), moved=(bn.scale, bn.shift))
    if channels.axis != 1:
        raise Refuse(f"BN normalizes axis 1, but the Concat's channels arrive on axis {channels.axis}")
    if bn.channels != count:
        raise Refuse(f"channel mismatch: the Concat has {count} channels, BN has {bn.channels}")
    scale, shift = chain.scale * bn.scale, chain.shift * bn.scale + bn.shift
    edit = Edit(into=list(producers), through=[concat, *nodes], output_axes={bn.output: 1})
    offset = 0
    for producer, part in zip(producers, parts):
        PRODUCERS[producer.op_type].forward(producer, index, scale[offset:offset + part.count],
                                            shift[offset:offset + part.count], edit)
        offset += part.count
    replace_batchnorm(edit, nodes, index, concat.output[0], bn)
    return edit


class Forward(Rule):
    """A BN whose walk up reaches a producer (or a channel Concat of producers): the producer absorbs it."""

    name = "forward"
    description = ("Conv / ConvTranspose / Gemm / MatMul (or a channel Concat of them) -> [look-through chain: "
                   "Identity, exact Cast, per-channel Add/Sub/Mul/Div, channel-keeping Reshape/Flatten/(Un)Squeeze/"
                   "Transpose, Pad, spatial average]* -> BatchNormalization")
    rewrites_into = True

    def match(self, candidate: Candidate):
        walk = candidate.walk
        if is_op(walk.top, ("Concat",)):
            return walk
        if not is_op(walk.top, PRODUCERS):
            return None
        if walk.top.op_type not in candidate.allowed:
            raise Skipped(f"{self.describe(walk)}, but rule {PRODUCERS[walk.top.op_type].skip_name!r} is skipped")
        return walk

    def describe(self, walk) -> str:
        return f"{walk.top.op_type} node {node_label(walk.top)!r} could absorb it"

    def plan(self, walk, candidate: Candidate) -> Edit:
        bn = candidate.bn
        if walk.top.op_type == "Concat":
            return plan_concat(walk.top, walk.nodes, candidate.index, bn, candidate.allowed)
        return plan(walk.top, walk.nodes, candidate.index, bn.node, bn.scale, bn.shift)


RULE = Forward()
