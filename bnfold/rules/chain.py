"""The chain walk: from a BN up to the op that can absorb it (forward), or down to the ops that can (backward),
through any sequence of look-through ops (rules.look_through: one entry per op), each the only reader of what it
reads. One walk serves every rule: forward, backward, decomposed BNs and branch merging.

track() follows the channels through the chain, composes its affine steps in float64, and checks that every map
moved across a node is one that node commutes with exactly (a Pad with a zero border takes a scale, not a shift;
a MaxPool any shift, but a scale only where it is >= 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np
import onnx

from ..graph import GraphIndex, is_op, node_label
from .base import BatchNorm, Refuse, read_batchnorm, require_exclusive
from .look_through import TABLE, LookThrough, Step
from .producers import PRODUCERS
from .views import Channels

LOOK_THROUGH = tuple(TABLE)
AFFINE = tuple(op for op, entry in TABLE.items() if entry.removed)


@dataclass
class Chain:
    """Look-through nodes between a BN and what absorbs it, in data-flow order, and the map they compose."""

    nodes: List[onnx.NodeProto] = field(default_factory=list)
    scale: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None


@dataclass
class Walk:
    """Where a walk up stopped: `top` produces `name` (None at a graph input); `nodes` were crossed, in data-flow
    order; `stop` says why it stopped there ("" at a producer); `shared` when `name` has other readers."""

    top: Optional[onnx.NodeProto]
    nodes: List[onnx.NodeProto]
    name: str
    stop: str = ""
    shared: bool = False


class Candidate:
    """One node offered to the rules, with what they share about it, each read once when first asked for: the BN
    it is (`bn`; Refuse when it is none that folds), the walk up from its input (`walk`) and what stops the walk down
    from its output (`boundary_below`)."""

    def __init__(self, node: onnx.NodeProto, index: GraphIndex, allowed: Tuple[str, ...]):
        self.node, self.index, self.allowed = node, index, allowed  # allowed: producer ops not skipped
        self._bn: Optional[BatchNorm] = None
        self._walk = None

    @property
    def bn(self) -> BatchNorm:
        if self._bn is None:
            self._bn = read_batchnorm(self.node, self.index)
        return self._bn

    @property
    def walk(self):
        if self._walk is None:
            self._walk = walk(self.bn.input, self.index)
        return self._walk

    @property
    def boundary_below(self) -> Optional[str]:
        """The look-through node the walk down from the BN's output may not cross, and why (a narrowing Cast, a
        MaxPool whose Indices are read); None when it stops anywhere else."""
        nodes, readers = walk_down(self.bn.output, self.index)
        if len(readers) != 1:
            return None
        _, why = _crossing(readers[0], self.index)
        return f"{readers[0].op_type} node {node_label(readers[0])!r} ({why})" if why else None


def data_input(node: onnx.NodeProto, index: GraphIndex) -> Optional[str]:
    """The run-time input a look-through node passes on; None when it is no look-through op or cannot be crossed."""
    return TABLE[node.op_type].data_input(node, index) if is_op(node, TABLE) else None


def _crossing(node: onnx.NodeProto, index: GraphIndex) -> Tuple[Optional[str], Optional[str]]:
    """(data input, None) when the walk may cross `node`; (None, why not) for a look-through op it may not cross
    here; (None, None) for any other op."""
    name = data_input(node, index)
    if name is None:
        return None, None
    why = TABLE[node.op_type].boundary(node, index)
    return (None, why) if why is not None else (name, None)


def walk(name: str, index: GraphIndex, *, through: Optional[Callable] = None, exclusive: bool = False) -> Walk:
    """Walk up from tensor `name` through look-through nodes (or those `through(node)` gives a data input for) to
    the first node that is none. With `exclusive`, stop at a tensor that other nodes read too or that is a graph
    output (branch merging: that tensor is the branch's source)."""
    nodes: List[onnx.NodeProto] = []
    while True:
        if exclusive and (len(index.value_readers(name)) != 1 or index.is_graph_output(name)):
            return Walk(index.producer(name), nodes[::-1], name, f"{name!r} is read by other nodes too", True)
        node = index.producer(name)
        if node is None:
            where = "a graph input" if name in index.input_names else (
                "an initializer" if name in index.initializers else "outside this graph")
            return Walk(None, nodes[::-1], name, f"{name!r} comes from {where}")
        if through is None and is_op(node, PRODUCERS):
            return Walk(node, nodes[::-1], name)
        passed, why = (through(node), None) if through is not None else _crossing(node, index)
        if passed is None or node.output[0] != name:
            stop = f"{name!r} comes from {node.op_type} node {node_label(node)!r}" + (f" ({why})" if why else "")
            return Walk(node, nodes[::-1], name, stop)
        nodes.append(node)
        name = passed


def walk_up(name: str, index: GraphIndex) -> Tuple[Optional[onnx.NodeProto], List, str]:
    """(top, look-through nodes from it to `name` in data-flow order, why the walk stopped there).

    `top` is the first node that is no look-through op: an op of the producer table, or another (a Concat, a Relu)
    with the reason saying what it is; None at a graph input.
    """
    found = walk(name, index)
    return found.top, found.nodes, found.stop


def walk_down(name: str, index: GraphIndex) -> Tuple[List[onnx.NodeProto], List[onnx.NodeProto]]:
    """(look-through nodes from `name` on, each the only reader of the one before; the readers at the end)."""
    nodes: List[onnx.NodeProto] = []
    while True:
        readers = index.value_readers(name)
        if len(readers) != 1 or index.is_graph_output(name):
            return nodes, readers
        node = readers[0]
        if _crossing(node, index)[0] != name:
            return nodes, readers
        nodes.append(node)
        name = node.output[0]


def _check_crossing(entry: LookThrough, node: onnx.NodeProto, index: GraphIndex, scale: np.ndarray,
                    shift: np.ndarray) -> None:
    """Refuse unless the map (scale, shift) moved across `node` commutes with it exactly."""
    commutes = entry.commutes(node, index)
    if not commutes.scale and np.any(scale != 1):
        raise Refuse(f"{node.op_type} {node_label(node)!r} does not commute with a per-channel scale "
                     f"({commutes.why}), and the scale moved across it is not 1")
    negative = int(np.count_nonzero(~(scale >= 0)))
    if not commutes.negative_scale and negative:
        raise Refuse(f"{node.op_type} {node_label(node)!r} commutes with a per-channel scale only where it is >= 0 "
                     f"({commutes.why}), and the scale moved across it is negative in {negative} of {scale.size} "
                     "channels")
    if not commutes.shift and np.any(shift):
        raise Refuse(f"{node.op_type} {node_label(node)!r} commutes with a per-channel scale but not a shift "
                     f"({commutes.why}), and the shift moved across it is not 0")


def track(nodes: List[onnx.NodeProto], index: GraphIndex, channels: Channels, *, moved=None,
          upward: bool = True) -> Tuple[Channels, Chain]:
    """Follow the channels through look-through nodes in data-flow order and compose their affine steps.

    `moved` is the map (scale, shift) that crosses the chain with them: a BN's after it (upward: a forward fold
    moves it, and every step, to the producer) or before it (downward: a backward fold moves it to the readers);
    None for none. Refuses at the first node that may move an element out of its channel, a constant that is not
    per channel, a division by zero, or a node that does not commute with the map moved across it.
    """
    steps: List[Optional[Step]] = []
    for node in nodes:
        entry = TABLE[node.op_type]
        step = entry.step(node, index, channels)
        steps.append(step)
        if step is None:
            channels = entry.channels(node, index, channels)
    scale, shift = np.ones(channels.count), np.zeros(channels.count)
    for step in steps:
        if step is not None:
            scale, shift = step.after(scale, shift)
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise Refuse("the chain's combined scale or shift overflows")
    if moved is not None and np.size(moved[0]) != channels.count:
        return channels, Chain(list(nodes), scale, shift)  # a channel mismatch: the caller refuses it
    crossing = moved if moved is not None else (np.ones(channels.count), np.zeros(channels.count))
    order = list(zip(nodes, steps))
    for node, step in (reversed(order) if upward else order):
        if step is None:
            _check_crossing(TABLE[node.op_type], node, index, *crossing)
        elif upward:  # the step comes before what already crosses: x -> step -> crossing
            own = step.after(np.ones(channels.count), np.zeros(channels.count))
            crossing = (own[0] * crossing[0], own[1] * crossing[0] + crossing[1])
        else:
            crossing = step.after(*crossing)
    return channels, Chain(list(nodes), scale, shift)


def require_single_readers(nodes: List[onnx.NodeProto], index: GraphIndex) -> None:
    """Each look-through node's output must be read only by the next node of the chain, and be no graph output."""
    for node, following in zip(nodes, nodes[1:]):
        require_exclusive(index, node.output[0], following, f"{node.op_type} {node_label(node)!r}")


def bypass_affine(edit, nodes: List[onnx.NodeProto], index: GraphIndex, kept: str) -> str:
    """Plan the removal of the chain's affine steps (their map is folded); the name of the last tensor the chain
    still computes, `kept` when no view follows it."""
    for node in nodes:
        if TABLE[node.op_type].removed:
            edit.bypass(node, list(node.input).index(data_input(node, index)))
        else:
            kept = node.output[0]
    return kept


def replace_batchnorm(edit, nodes: List[onnx.NodeProto], index: GraphIndex, source: str, bn: BatchNorm) -> None:
    """Plan a forward fold's last steps: the chain's affine steps go (its views stay, reading on from `source`),
    the BN goes, and the last tensor kept takes the BN's output name, so its readers and graph outputs stay."""
    edit.remove(bn.node)
    edit.rename(bypass_affine(edit, nodes, index, source), bn.output)
