"""Decomposed BNs: a producer followed by Mul|Div *and* Add|Sub by per-channel constants, as torchvision's
FrozenBatchNorm2d (x * scale + shift) and some exporters emit, folds like a BN (rules.forward), through the same
look-through chain. A lone bias Add or scale Mul is no BN and is left alone. Only chains whose producer has a
constant weight are candidates; they are reported apart from BatchNormalization nodes.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import onnx

from ..graph import Edit, GraphIndex, NotConstant, is_op, node_label
from ..report import BnDecision
from . import forward
from .base import Refuse, Rule, Skipped
from .chain import AFFINE, Candidate, data_input, walk_up
from .look_through import TABLE
from .producers import PRODUCERS



def decomposed_chain(node: onnx.NodeProto, index: GraphIndex) -> Optional[Tuple[onnx.NodeProto, List[onnx.NodeProto]]]:
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


class Decomposed(Rule):
    """The last Mul / Add / Sub / Div of a scaling-and-shifting chain after a producer: the producer absorbs it."""

    name = "decomposed"
    description = ("Conv / ConvTranspose / Gemm / MatMul -> Mul|Div and Add|Sub by per-channel constants, in any "
                   "order, through the same chain (FrozenBatchNorm2d)")
    candidates = AFFINE
    report = "decomposed"
    rewrites_into = True

    def match(self, candidate: Candidate):
        try:
            return decomposed_chain(candidate.node, candidate.index)
        except (Refuse, NotConstant):
            return None

    def describe(self, found) -> str:
        return f"{found[0].op_type} node {node_label(found[0])!r} could absorb it"

    def record(self, candidate: Candidate, found) -> BnDecision:
        node, index = candidate.node, candidate.index
        return BnDecision(node=node_label(found[1][0]), output=node.output[0], graph=index.path, folded=False)

    def plan(self, found, candidate: Candidate) -> Edit:
        producer, nodes = found
        if producer.op_type not in candidate.allowed:
            raise Skipped(f"rule {PRODUCERS[producer.op_type].skip_name!r} is skipped")
        return forward.plan(producer, nodes, candidate.index, nodes[-1], None, None)


RULE = Decomposed()
