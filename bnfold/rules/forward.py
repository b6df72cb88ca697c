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

from ..graph import Edit, GraphIndex, node_label
from .base import Refuse, require_exclusive
from .chain import AFFINE, Channels, data_input, require_single_readers, sizes_of, track
from .producers import PRODUCERS, Producer

NAME = "forward"
DESCRIPTION = ("Conv / ConvTranspose / Gemm / MatMul -> [Identity, Cast, per-channel Add/Sub/Mul/Div, channel-keeping "
               "Reshape/Flatten/(Un)Squeeze, spatial average]* -> BatchNormalization")


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
    channels, chain = track(nodes, index, producer_channels(producer, index))
    if scale is not None:
        if channels.axis is None:
            conflict = index.type_conflict(producer.input[0]) or index.type_conflict(producer.output[0])
            raise Refuse(conflict or f"the rank of the {producer.op_type} output is unknown, so BN's channel axis "
                         "cannot be matched to its channels")
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
    kept = (inserted or producer).output[0]
    for node in nodes:
        if node.op_type in AFFINE:
            edit.bypass(node, list(node.input).index(data_input(node, index)))
        else:
            kept = node.output[0]
    output = end.output[0]
    if scale is not None:
        edit.remove(end)
    edit.rename(kept, output)
    return edit
