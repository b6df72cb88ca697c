"""Backward folds down a tree: a BN whose output reaches, through look-through ops that may fan out, readers that
can each absorb it (Next-ViT: BN2d -> tokens -> the q Linear, and -> AvgPool1d -> BatchNorm1d before k and v).

The walk goes down from the BN through every reader: a look-through op (reading the tensor as its data input) is
crossed and its output followed; a producer (reading it as input 0) or another BN is a leaf; anything else stops
the fold with the reason. Each path is tracked on its own (rules.chain.track: channels, and every map moved across
a node must commute with it). A producer leaf absorbs the path's map on its input channels (producers.py), a BN
leaf composes it into its own parameters: BN'(x) = BN(x * a + b) has gamma * a and beta + s * (b + mean * (a - 1))
with s = gamma / sqrt(var + eps), an exact per-channel identity. The affine steps crossed go; the views stay.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import onnx

from ..graph import Edit, GraphIndex, is_op, node_label
from .backward import absorb
from .base import BatchNorm, Refuse, Rule, Skipped, read_batchnorm, set_exact
from .chain import Candidate, bypass_affine, data_input, track
from .look_through import TABLE
from .producers import PRODUCERS
from .views import Channels, sizes_of

Leaf = Tuple[onnx.NodeProto, List[onnx.NodeProto]]  # a reader that absorbs, and the look-through path to it


def tree(name: str, index: GraphIndex) -> Tuple[List[onnx.NodeProto], List[Leaf], List[str]]:
    """(look-through nodes crossed, leaves, why the fold cannot be made: a reader that can neither be crossed nor
    absorb, a graph output) below tensor `name`."""
    crossed: List[onnx.NodeProto] = []
    leaves: List[Leaf] = []
    blockers: List[str] = []
    pending = [(name, [])]
    while pending:
        tensor, path = pending.pop()
        if index.is_graph_output(tensor):
            blockers.append(f"{tensor!r} is also a graph output")
        readers = {id(reader): reader for reader in index.value_readers(tensor)}
        for reader in readers.values():
            if is_op(reader, PRODUCERS) or is_op(reader, ("BatchNormalization",)):
                reads = [position for position, input_name in enumerate(reader.input) if input_name == tensor]
                if reads != [0]:
                    blockers.append(f"{reader.op_type} {node_label(reader)!r} reads {tensor!r} as input {reads}, "
                                    "not only as its data input 0")
                leaves.append((reader, path))
            elif is_op(reader, TABLE) and data_input(reader, index) == tensor and \
                    TABLE[reader.op_type].boundary(reader, index) is None and list(reader.input).count(tensor) == 1:
                crossed.append(reader)
                pending.append((reader.output[0], path + [reader]))
            else:
                why = TABLE[reader.op_type].boundary(reader, index) if is_op(reader, TABLE) else None
                blockers.append(f"{tensor!r} also feeds {reader.op_type} {node_label(reader)!r}, which cannot "
                                f"absorb the BN" + (f" ({why})" if why else ""))
    return crossed, leaves, blockers


def _absorb_into_bn(leaf: onnx.NodeProto, index: GraphIndex, scale, shift, edit: Edit) -> None:
    """Plan BN'(x) = BN(x * scale + shift) in the leaf BN's gamma and beta (mean, var and epsilon unchanged)."""
    after: BatchNorm = read_batchnorm(leaf, index)
    if after.channels != scale.size:
        raise Refuse(f"channel mismatch: BN {node_label(leaf)!r} has {after.channels} channels, the BN before it "
                     f"{scale.size}")
    gamma, beta, mean = (index.constant(leaf.input[position]).astype(np.float64).reshape(-1) for position in (1, 2, 3))
    new_gamma = gamma * scale
    new_beta = beta + after.scale * (shift + mean * (scale - 1))
    for position, value in ((1, new_gamma), (2, new_beta)):
        dtype = index.constant(leaf.input[position]).dtype
        set_exact(edit, leaf, position, value.reshape(index.constant(leaf.input[position]).shape), dtype,
                  f"{leaf.input[position]}_bnfold")


def plan(bn: BatchNorm, index: GraphIndex, crossed: List[onnx.NodeProto], leaves: List[Leaf]) -> Edit:
    rank = index.rank(bn.input) or index.rank(bn.output)
    start = Channels(bn.channels, sizes_of(index.dims(bn.input), rank), 1 if rank is not None else None)
    edit = Edit(into=[leaf for leaf, _ in leaves], through=list(crossed))
    for leaf, path in leaves:
        channels, chain = track(path, index, Channels(start.count, None if start.dims is None else list(start.dims),
                                                      start.axis), moved=(bn.scale, bn.shift), upward=False)
        scale, shift = bn.scale * chain.scale, bn.shift * chain.scale + chain.shift
        last = path[-1].output[0] if path else bn.output
        if leaf.op_type == "BatchNormalization":
            if channels.axis != 1:
                raise Refuse(f"BN's channels reach BN {node_label(leaf)!r} on axis {channels.axis}, not axis 1")
            _absorb_into_bn(leaf, index, scale, shift, edit)
            edit.output_axes[leaf.output[0]] = 1
            continue
        absorb(leaf, channels, bn, scale, shift, edit, index, last)
    bypass_affine(edit, crossed, index, bn.input)
    edit.bypass(bn.node, 0)
    return edit


class BackwardTree(Rule):
    """A BN whose readers, through look-through ops that fan out, are all producers or BNs: each absorbs it."""

    name = "backward_tree"
    description = ("BatchNormalization -> look-through ops that may fan out -> every reader a Conv / ConvTranspose "
                   "/ Gemm / MatMul (as backward) or another BN, which composes the map into its parameters "
                   "(Next-ViT: BN2d -> tokens -> q Linear and AvgPool1d -> BatchNorm1d)")

    def match(self, candidate: Candidate):
        """The tree, when it reaches a producer or a BN; None when it reaches none (then it is no pattern of ours)."""
        crossed, leaves, blockers = tree(candidate.bn.output, candidate.index)
        if not leaves:
            return None
        if blockers:
            raise Refuse(blockers[0])
        return crossed, leaves

    def describe(self, match) -> str:
        return ", ".join(f"{leaf.op_type} {node_label(leaf)!r}" for leaf, _ in match[1]) + " could absorb it"

    def plan(self, match, candidate: Candidate) -> Edit:
        crossed, leaves = match
        skipped = sorted({leaf.op_type for leaf, _ in leaves if is_op(leaf, PRODUCERS)} - set(candidate.allowed))
        if skipped:
            raise Skipped(f"{self.describe(match)}, but rule(s) "
                          f"{', '.join(repr(PRODUCERS[op].skip_name) for op in skipped)} skipped")
        return plan(candidate.bn, candidate.index, crossed, leaves)


RULE = BackwardTree()
