"""Forward folds through a sum: BN(Conv_a(x) + Conv_b(y)) (pre-activation RegNet / ResNetV2 / Xception, where a
block's residual Conv and its shortcut Conv are summed and normalized). BN(a + b) = a * s + b * s + t: every
summed producer absorbs the scale and one of them the shift. Sub works the same way (the minuend takes the shift),
and Sum of any number of inputs.

Each summed input comes from a producer (through any look-through chain, each tensor read by the next node only),
read by the sum alone; the sum's output reaches the BN (through a look-through chain) and is read by nothing else.
Every producer's channels must be on the sum's channel axis with the BN's count and the same rank, so broadcasting
never moves a channel; a producer whose output is broadcast along a spatial axis still adds its shift once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import onnx

from ..graph import Edit, is_op, node_label
from .base import Refuse, Rule, Skipped, rank_unknown, require_exclusive
from .chain import Candidate, Walk, bypass_affine, replace_batchnorm, require_single_readers, track, walk
from .forward import producer_channels
from .producers import PRODUCERS
from .views import Channels, sizes_of

SUMS = ("Add", "Sum", "Sub")


@dataclass
class SumMatch:
    """`total` sums `branches` (walks up from each input, each ending at a producer); `nodes` lead to the BN."""

    total: onnx.NodeProto
    nodes: List[onnx.NodeProto]
    branches: List[Walk]


def _shift_taker(match: SumMatch) -> int:
    """The branch that takes the shift: Sub's minuend; else the first producer with a bias (no new tensor)."""
    if match.total.op_type == "Sub":
        return 0
    for number, branch in enumerate(match.branches):
        top = branch.top
        if top.op_type != "MatMul" and len(top.input) > 2 and top.input[2]:
            return number
    return 0


def plan(match: SumMatch, candidate: Candidate) -> Edit:
    bn, index, total = candidate.bn, candidate.index, match.total
    require_exclusive(index, total.output[0], match.nodes[0] if match.nodes else bn.node,
                      f"{total.op_type} {node_label(total)!r}")
    require_single_readers(match.nodes + [bn.node], index)
    parts = []
    for name, branch in zip(total.input, match.branches):
        producer = branch.top
        require_exclusive(index, producer.output[0], branch.nodes[0] if branch.nodes else total,
                          f"{producer.op_type} {node_label(producer)!r}")
        require_single_readers(branch.nodes + [total], index)
        channels, _ = track(branch.nodes, index, producer_channels(producer, index))
        if channels.dims is None:
            raise Refuse(f"{total.op_type} {node_label(total)!r} input {name!r} cannot be matched to the channels: "
                         f"{rank_unknown(name)}")
        parts.append(channels)
    ranks = {len(part.dims) for part in parts}
    axes = {part.axis for part in parts}
    counts = {part.count for part in parts}
    if len(ranks) != 1 or len(axes) != 1 or counts != {bn.channels}:
        raise Refuse(f"{total.op_type} {node_label(total)!r} sums inputs whose channels differ (ranks "
                     f"{sorted(ranks)}, channel axes {sorted(axes)}, counts {sorted(counts)}; BN has {bn.channels})")
    rank, axis = ranks.pop(), axes.pop()
    dims = sizes_of(index.dims(total.output[0]), rank)
    dims[axis] = type(dims[axis])(bn.channels)
    channels, after = track(match.nodes, index, Channels(bn.channels, dims, axis), moved=(bn.scale, bn.shift))
    if channels.axis != 1:
        raise Refuse(f"BN normalizes axis 1, but the {total.op_type}'s channels arrive on axis {channels.axis}")
    scale, shift = after.scale * bn.scale, after.shift * bn.scale + bn.shift
    taker = _shift_taker(match)
    edit = Edit(into=[branch.top for branch in match.branches],
                through=[*(node for branch in match.branches for node in branch.nodes), total, *match.nodes],
                output_axes={bn.output: 1})
    for number, branch in enumerate(match.branches):
        moved = shift if number == taker else np.zeros_like(shift)
        _, chain = track(branch.nodes, index, producer_channels(branch.top, index), moved=(scale, moved))
        PRODUCERS[branch.top.op_type].forward(branch.top, index, chain.scale * scale, chain.shift * scale + moved,
                                              edit)
        bypass_affine(edit, branch.nodes, index, branch.top.output[0])
    replace_batchnorm(edit, match.nodes, index, total.output[0], bn)
    return edit


def find(candidate: Candidate):
    """The sum a BN's walk up stops at, when every input of it comes from a producer; None otherwise."""
    found, index = candidate.walk, candidate.index
    total = found.top
    if not is_op(total, SUMS) or total.output[0] != found.name:
        return None
    inputs = list(total.input)
    if len(inputs) < 2 or (total.op_type != "Sum" and len(inputs) != 2) or not all(inputs) or \
            len(set(inputs)) != len(inputs):
        return None
    branches = [walk(name, index) for name in inputs]
    if not all(is_op(branch.top, PRODUCERS) and not branch.stop for branch in branches):
        return None  # a residual connection, a bias: no sum of producers
    return SumMatch(total, found.nodes, branches)


class SumForward(Rule):
    """A BN whose walk up reaches an Add / Sum / Sub of producers: each producer absorbs the scale, one the shift."""

    name = "sum_forward"
    description = ("Conv / ConvTranspose / Gemm / MatMul outputs, each read by the sum only, -> Add / Sum / Sub -> "
                   "[look-through chain] -> BatchNormalization (pre-activation RegNet / Xception): every producer "
                   "absorbs the scale, one the shift")
    rewrites_into = True

    def match(self, candidate: Candidate):
        found = find(candidate)
        if found is None:
            return None
        skipped = sorted({branch.top.op_type for branch in found.branches} - set(candidate.allowed))
        if skipped:
            raise Skipped(f"{self.describe(found)}, but rule(s) "
                          f"{', '.join(repr(PRODUCERS[op].skip_name) for op in skipped)} skipped")
        return found

    def describe(self, match: SumMatch) -> str:
        return " and ".join(f"{branch.top.op_type} {node_label(branch.top)!r}" for branch in match.branches) + \
            f" (summed by {match.total.op_type} {node_label(match.total)!r}) could absorb it"

    def plan(self, match: SumMatch, candidate: Candidate) -> Edit:
        return plan(match, candidate)


RULE = SumForward()
