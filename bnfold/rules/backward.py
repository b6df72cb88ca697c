"""Backward folds: a BN's map x * scale + shift is absorbed by the nodes that *read* it (DenseNet, pre-activation
ResNets), across any look-through chain between them: each reader's weight is scaled along its input-channel axis
and the shift, pushed through the weight, joins its bias (producers.py says how, and when it cannot: a padded Conv
with a non-zero shift). Every reader at the end of the chain must fold, or none does; the BN and the chain's
Mul/Add nodes disappear, its views and averages stay.
"""

from __future__ import annotations

import onnx

from ..graph import Edit, GraphIndex, is_op, node_label
from .base import BatchNorm, Refuse, Rule, Skipped, rank_unknown
from .chain import Candidate, bypass_affine, track, walk_down
from .views import Channels, sizes_of
from .producers import PRODUCERS



def _plan(bn: BatchNorm, index: GraphIndex, allowed, nodes, readers) -> Edit:
    last = nodes[-1].output[0] if nodes else bn.output
    if index.is_graph_output(last) or index.is_graph_output(bn.output):
        raise Refuse(f"{last!r} is also a graph output")
    others = sorted({f"{node.op_type} {node_label(node)!r}" for node in readers if not is_op(node, allowed)})
    if others:
        raise Refuse(f"{last!r} also feeds {', '.join(others)}, which cannot absorb the BN")
    for node in readers:
        reads = [position for position, name in enumerate(node.input) if name == last]
        if reads != [0]:
            raise Refuse(f"{node.op_type} {node_label(node)!r} reads {last!r} as input {reads}, not only as its "
                         "data input 0")
    rank = index.rank(bn.input) or index.rank(bn.output)
    channels, chain = track(nodes, index, Channels(bn.channels, sizes_of(index.dims(bn.input), rank),
                                                   1 if rank is not None else None),
                            moved=(bn.scale, bn.shift), upward=False)
    scale, shift = bn.scale * chain.scale, bn.shift * chain.scale + chain.shift
    edit = Edit(into=list(readers), through=list(nodes))
    for reader in readers:
        absorb(reader, channels, bn, scale, shift, edit, index, bn.input if not nodes else nodes[-1].output[0])
    bypass_affine(edit, nodes, index, bn.input)  # the views stay, reading what the BN read
    edit.bypass(bn.node, 0)
    return edit


class Backward(Rule):
    """A BN whose walk down reaches readers of which at least one is a producer: every reader must absorb it."""

    name = "backward"
    description = ("BatchNormalization -> [look-through chain] -> Conv (unpadded, or any padding when the shift is "
                   "0) / ConvTranspose (shift 0) / Gemm (transA=0) / MatMul, for every reader")

    def match(self, candidate: Candidate):
        nodes, readers = walk_down(candidate.bn.output, candidate.index)
        if not any(is_op(node, PRODUCERS) for node in readers):
            return None
        return nodes, readers

    def describe(self, match) -> str:
        return ", ".join(f"{node.op_type} {node_label(node)!r}" for node in match[1] if is_op(node, PRODUCERS)) + \
            " could absorb it"

    def plan(self, match, candidate: Candidate) -> Edit:
        nodes, readers = match
        skipped = sorted({node.op_type for node in readers if is_op(node, PRODUCERS)} - set(candidate.allowed))
        if skipped:
            names = ", ".join(repr(PRODUCERS[op].skip_name) for op in skipped)
            raise Skipped(f"{self.describe(match)}, but rule {names} {'is' if len(skipped) == 1 else 'are'} skipped")
        return _plan(candidate.bn, candidate.index, candidate.allowed, nodes, readers)


RULE = Backward()


def absorb(reader: onnx.NodeProto, channels: Channels, bn: BatchNorm, scale, shift, edit: Edit, index: GraphIndex,
           last: str) -> None:
    """Plan `reader` (a producer reading `last`, where the BN's channels arrive as `channels`) taking the map
    x * scale + shift on its input channels; Refuse when its input channels are not the BN's."""
    entry = PRODUCERS[reader.op_type]
    reader_rank = len(channels.dims) if channels.dims is not None else entry.input_rank(reader, index)
    if reader_rank is None or channels.axis is None:
        raise Refuse(f"BN's channel axis cannot be matched to the input channels of {reader.op_type} "
                     f"{node_label(reader)!r}: {rank_unknown(last)}")
    if channels.axis != entry.input_channel_axis(reader_rank):
        raise Refuse(f"BN's channels reach {reader.op_type} {node_label(reader)!r} on axis {channels.axis}, "
                     f"its input channels are on axis {entry.input_channel_axis(reader_rank)}")
    count = entry.input_channels(reader, index)
    if count != bn.channels:
        raise Refuse(f"channel mismatch: {reader.op_type} {node_label(reader)!r} has {count} input channels, "
                     f"BN has {bn.channels}")
    entry.backward(reader, index, scale, shift, edit)
    edit.output_axes[reader.output[0]] = entry.output_axis
