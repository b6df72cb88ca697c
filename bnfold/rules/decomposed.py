"""Decomposed BNs: a producer followed by Mul|Div *and* Add|Sub by per-channel constants, as torchvision's
FrozenBatchNorm2d (x * scale + shift) and some exporters emit, folds like a BN (rules.forward), through the same
look-through chain. A lone bias Add or scale Mul is no BN and is left alone. Only chains whose producer has a
constant weight are candidates; they are reported apart from BatchNormalization nodes.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import onnx

from ..graph import GraphIndex, is_op
from .base import Refuse
from .chain import AFFINE, data_input, walk_up
from .look_through import TABLE
from .producers import PRODUCERS

NAME = "decomposed"
DESCRIPTION = ("Conv / ConvTranspose / Gemm / MatMul -> Mul|Div and Add|Sub by per-channel constants, in any order, "
               "through the same chain (FrozenBatchNorm2d)")


def candidate(node: onnx.NodeProto, index: GraphIndex) -> Optional[Tuple[onnx.NodeProto, List[onnx.NodeProto]]]:
    """(producer, chain ending at `node`) when `node` ends a scaling-and-shifting chain after a producer with a
    constant weight; None otherwise."""
    if not is_op(node, AFFINE) or data_input(node, index) is None:
        return None
    following = index.sole_consumer(node.output[0])
    if is_op(following, ("BatchNormalization",)) and following.input[0] == node.output[0] or \
            is_op(following, AFFINE) and data_input(following, index) == node.output[0]:
        return None  # the chain goes on
    producer, nodes, _ = walk_up(node.output[0], index)
    if not is_op(producer, PRODUCERS) or not nodes:
        return None
    for node_before in nodes[:-1]:
        if len(index.value_readers(node_before.output[0])) != 1 or index.is_graph_output(node_before.output[0]):
            return None  # the chain from the producer is broken: what is left is no BN
    entries = [TABLE[n.op_type] for n in nodes]
    if not (any(entry.scales for entry in entries) and any(entry.shifts for entry in entries)):
        return None
    try:
        PRODUCERS[producer.op_type].output_channels(producer, index)
    except Refuse:
        return None
    return producer, nodes
