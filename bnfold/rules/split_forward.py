"""Forward folds through a channel Split: Conv -> Split(axis = channels) -> BN on one part (timm's lambda layers
normalize the q and v parts of one qkv Conv), or Conv -> Slice of a channel range -> BN (`x[:, a:b]`). The part's
BN is a map on a range of the producer's output channels: the producer absorbs it in those rows (scale 1 and shift
0 elsewhere), and the other parts are unchanged.

The producer's output reaches the Split through any look-through chain (each tensor read by the next node only,
the producer's read by the chain alone); the part reaches the BN through another, read by it alone. What else
reads the split tensor must be a channel range too (Slice, or Split parts), disjoint from the BN's.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import onnx

from ..graph import Edit, GraphIndex, NotConstant, is_op, node_label
from .base import Refuse, Rule, Skipped, rank_unknown, read_attribute, require_exclusive
from .chain import Candidate, Walk, bypass_affine, replace_batchnorm, require_single_readers, track, walk
from .forward import producer_channels
from .producers import PRODUCERS
from .views import Channels


def split_sizes(split: onnx.NodeProto, index: GraphIndex, total: int) -> List[int]:
    """The channels of each Split output: the `split` input (opset 13+) or attribute, else equal parts (opset 18's
    num_outputs: ceil(total / n) each, the last what remains)."""
    sizes = read_attribute(split, "split", None)
    if len(split.input) > 1 and split.input[1]:
        try:
            sizes = [int(s) for s in index.constant(split.input[1]).reshape(-1)]
        except NotConstant as why:
            raise Refuse(f"Split {node_label(split)!r} sizes are not a constant: {why}") from None
    count = len(split.output)
    if sizes is None:
        part = -(-total // count) if read_attribute(split, "num_outputs", None) is not None else total // count
        sizes = [part] * (count - 1) + [total - part * (count - 1)]
        if read_attribute(split, "num_outputs", None) is None and total % count:
            raise Refuse(f"Split {node_label(split)!r} splits {total} channels into {count} equal parts")
    sizes = [int(s) for s in sizes]
    if len(sizes) != count or sum(sizes) != total or min(sizes) < 0:
        raise Refuse(f"Split {node_label(split)!r} sizes {sizes} do not split {total} channels into {count} parts")
    return sizes


def _slice_range(node: onnx.NodeProto, index: GraphIndex, axis: int, rank: int, total: int) -> Tuple[int, int]:
    """[begin, end) of the channels a Slice keeps: it must slice the channel axis only, with step 1."""
    def constant(position, default=None):
        if position >= len(node.input) or not node.input[position]:
            return default
        try:
            return [int(v) for v in index.constant(node.input[position]).reshape(-1)]
        except NotConstant as why:
            raise Refuse(f"Slice {node_label(node)!r} bounds are not constants: {why}") from None

    if len(node.input) > 1:
        starts, ends = constant(1), constant(2)
        axes, steps = constant(3, list(range(len(starts)))), constant(4, [1] * len(starts))
    else:
        starts, ends = list(read_attribute(node, "starts", [])), list(read_attribute(node, "ends", []))
        axes = list(read_attribute(node, "axes", None) or range(len(starts)))
        steps = [1] * len(starts)
    axes = [a + rank if a < 0 else a for a in axes]
    if axes != [axis] or steps != [1]:
        raise Refuse(f"Slice {node_label(node)!r} slices axes {axes} with steps {steps}, not a channel range "
                     f"(axis {axis}, step 1)")
    begin, end = (value + total if value < 0 else value for value in (starts[0], ends[0]))
    begin, end = min(max(begin, 0), total), min(max(end, 0), total)
    return begin, max(begin, end)


def _ranges(reader: onnx.NodeProto, index: GraphIndex, axis: int, rank: int, total: int) -> List[Tuple[int, int]]:
    """The channel range of each output of a Split or Slice reading the split tensor (Refuse for anything else)."""
    if is_op(reader, ("Slice",)) and reader.input[0] and list(reader.input).count(reader.input[0]) == 1:
        return [_slice_range(reader, index, axis, rank, total)]
    if is_op(reader, ("Split",)):
        split_axis = int(read_attribute(reader, "axis", 0))
        if (split_axis + rank if split_axis < 0 else split_axis) != axis:
            raise Refuse(f"Split {node_label(reader)!r} splits axis {split_axis}, but the channels are on axis "
                         f"{axis}")
        sizes = split_sizes(reader, index, total)
        return [(sum(sizes[:part]), sum(sizes[:part + 1])) for part in range(len(sizes))]
    raise Refuse(f"{reader.input[0]!r} also feeds {reader.op_type} {node_label(reader)!r}, which reads more than a "
                 "channel range of it")


def find(candidate: Candidate):
    """(Split / Slice, the walk up from it to a producer) when the BN's walk up stops at its output; None
    otherwise."""
    split = candidate.walk.top
    if not is_op(split, ("Split", "Slice")) or not split.input or not split.input[0]:
        return None
    up = walk(split.input[0], candidate.index)
    if not is_op(up.top, PRODUCERS) or up.stop:
        return None
    return split, up


def plan(split: onnx.NodeProto, up: Walk, candidate: Candidate) -> Edit:
    bn, index, down = candidate.bn, candidate.index, candidate.walk
    producer = up.top
    part = list(split.output).index(down.name)
    if up.nodes:
        require_exclusive(index, producer.output[0], up.nodes[0], f"{producer.op_type} {node_label(producer)!r}")
    require_single_readers(up.nodes, index)
    require_exclusive(index, down.name, down.nodes[0] if down.nodes else bn.node,
                      f"{split.op_type} {node_label(split)!r}")
    require_single_readers(down.nodes + [bn.node], index)
    channels, _ = track(up.nodes, index, producer_channels(producer, index))
    if channels.dims is None:
        raise Refuse(f"{split.op_type} {node_label(split)!r} axis cannot be matched to the {producer.op_type}'s channels: "
                     f"{rank_unknown(split.input[0])}")
    rank, axis, tensor = len(channels.dims), channels.axis, split.input[0]
    if index.is_graph_output(tensor):
        raise Refuse(f"{tensor!r}, which {split.op_type} {node_label(split)!r} splits, is also a graph output")
    begin, end = _ranges(split, index, axis, rank, channels.count)[part]
    readers = list({id(node): node for node in index.value_readers(tensor)}.values())
    for reader in readers:
        overlapping = [(a, b) for a, b in _ranges(reader, index, axis, rank, channels.count)
                       if a < end and begin < b and reader is not split]
        if overlapping:
            raise Refuse(f"{reader.op_type} {node_label(reader)!r} also reads channels {overlapping[0]} of the "
                         f"{producer.op_type}'s output, which the BN on channels {(begin, end)} would change")
    size = end - begin
    dims = list(channels.dims)
    dims[axis] = type(dims[axis])(size)
    arrived, after = track(down.nodes, index, Channels(size, dims, axis), moved=(bn.scale, bn.shift))
    if arrived.axis != 1:
        raise Refuse(f"BN normalizes axis 1, but the {split.op_type} part's channels arrive on axis {arrived.axis}")
    if bn.channels != size:
        raise Refuse(f"channel mismatch: {split.op_type} {node_label(split)!r} output {part} has {size} channels, "
                     f"BN has {bn.channels}")
    scale, shift = np.ones(channels.count), np.zeros(channels.count)
    scale[begin:begin + size] = after.scale * bn.scale
    shift[begin:begin + size] = after.shift * bn.scale + bn.shift
    _, before = track(up.nodes, index, producer_channels(producer, index), moved=(scale, shift))
    # the other range readers join the local check's piece: it compares what they read, not the changed rows
    others = [reader for reader in readers if reader is not split]
    edit = Edit(into=[producer], through=[*up.nodes, split, *others, *down.nodes], output_axes={bn.output: 1})
    PRODUCERS[producer.op_type].forward(producer, index, before.scale * scale, before.shift * scale + shift, edit)
    bypass_affine(edit, up.nodes, index, producer.output[0])
    replace_batchnorm(edit, down.nodes, index, down.name, bn)
    return edit


class SplitForward(Rule):
    """A BN on one part of a channel Split (or a channel Slice) of a producer's output: the producer's rows of that
    part absorb it."""

    name = "split_forward"
    description = ("Conv / ConvTranspose / Gemm / MatMul -> [look-through chain] -> Split / Slice along the channels -> "
                   "[look-through chain] -> BatchNormalization on one part (timm lambda layers): that part's rows "
                   "absorb it")
    rewrites_into = True

    def match(self, candidate: Candidate):
        found = find(candidate)
        if found is not None and found[1].top.op_type not in candidate.allowed:
            raise Skipped(f"{self.describe(found)}, but rule {PRODUCERS[found[1].top.op_type].skip_name!r} is "
                          "skipped")
        return found

    def describe(self, found) -> str:
        producer = found[1].top
        return f"the rows of {producer.op_type} {node_label(producer)!r} split by {node_label(found[0])!r} could " \
               "absorb it"

    def plan(self, found, candidate: Candidate) -> Edit:
        return plan(found[0], found[1], candidate)


RULE = SplitForward()
