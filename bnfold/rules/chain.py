"""The chain walk: from a BN up to the op that can absorb it (forward), or down to the ops that can (backward),
through any sequence of look-through ops, each the only reader of what it reads.

Look-through ops, the one table the rules read:
- views, which move no element out of its channel: Identity, Cast (float to float, exact for every value: the
  same type or a wider one), Reshape, Flatten, Squeeze, Unsqueeze (rules.views proves it for each); a narrowing
  Cast rounds, so a map moved across it would be rounded too: it is a boundary, as any op not listed here;
- per-channel affine steps: Add, Sub, Mul, Div by a constant that broadcasts along the channel axis only (Div
  only as the divisor), composed in float64;
- spatial averages: GlobalAveragePool, and ReduceMean over axes that exclude the channel axis: an average of
  x * s + t is the average of x, times s, plus t.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from ..graph import NUMPY_ELEMENT_TYPES, GraphIndex, is_op, node_label
from .affine import compose_affine
from .base import Refuse, read_attribute, require_exclusive
from .producers import PRODUCERS
from .views import Channels, average, relocate, view_dims

VIEWS = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
AFFINE = ("Add", "Sub", "Mul", "Div")
AVERAGES = ("GlobalAveragePool", "ReduceMean")
LOOK_THROUGH = VIEWS + AFFINE + AVERAGES
SCALING, SHIFTING = ("Mul", "Div"), ("Add", "Sub")

@dataclass
class Chain:
    """Look-through nodes between a BN and what absorbs it, in data-flow order, and the map they compose."""

    nodes: List[onnx.NodeProto] = field(default_factory=list)
    scale: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None


def data_input(node: onnx.NodeProto, index: GraphIndex) -> Optional[str]:
    """The run-time input a look-through node passes on; None when it has none or more than one."""
    if node.op_type in AFFINE:
        if len(node.input) != 2 or node.input[0] == node.input[1]:
            return None
        constant = [index.is_constant(name) for name in node.input]
        if constant.count(False) != 1:
            return None
        data = constant.index(False)
        if node.op_type == "Div" and data == 1:
            return None  # c / x is not affine in x
        return node.input[data]
    return node.input[0] if node.input and node.input[0] else None


def float_dtype(dtype) -> bool:
    """float16/32/64 and bfloat16 (ml_dtypes' other floats, float8 and float4, are no look-through types)."""
    return dtype is not None and (np.dtype(dtype).kind == "f" or np.dtype(dtype).name == "bfloat16")


def exact_cast(source, target) -> bool:
    """Whether casting float type `source` to float type `target` gives every value back unchanged: the target has
    at least the source's mantissa bits, largest exponent and smallest subnormal."""
    import ml_dtypes

    if np.dtype(source) == np.dtype(target):
        return True
    a, b = ml_dtypes.finfo(source), ml_dtypes.finfo(target)
    return b.nmant >= a.nmant and b.maxexp >= a.maxexp and b.minexp - b.nmant <= a.minexp - a.nmant


def _cast_types(node: onnx.NodeProto, index: GraphIndex):
    """(source dtype or None, target dtype or None) of a Cast."""
    to = read_attribute(node, "to", 0)
    target = np.dtype(helper.tensor_dtype_to_np_dtype(to)) if to in NUMPY_ELEMENT_TYPES else None
    return index.dtype(node.input[0]), target


def boundary(node: onnx.NodeProto, index: GraphIndex) -> Optional[str]:
    """Why a node of a look-through op type cannot be looked through here (None when it can): a Cast that is not
    exact for every value rounds what passes it, so no per-channel map may move across it."""
    if node.op_type != "Cast":
        return None
    try:
        source, target = _cast_types(node, index)
    except Refuse as why:
        return str(why)
    if source is None:
        return f"the element type of its input {node.input[0]!r} is unknown, so it may round"
    if not (float_dtype(source) and float_dtype(target)):
        return f"it casts {source.name} to {target.name if target is not None else 'a non-numeric type'}, " \
               "not float to float"
    if not exact_cast(source, target):
        return f"it narrows {source.name} to {target.name}, rounding values a map moved across it would not see"
    return None


def walk_up(name: str, index: GraphIndex) -> Tuple[Optional[onnx.NodeProto], List, str]:
    """(top, look-through nodes from it to `name` in data-flow order, why the walk stopped there).

    `top` is the first node that is no look-through op: an op of the producer table, or another (a Concat, a Relu)
    with the reason saying what it is; None at a graph input.
    """
    nodes: List[onnx.NodeProto] = []
    while True:
        node = index.producer(name)
        if node is None:
            where = "a graph input" if name in index.input_names else (
                "an initializer" if name in index.initializers else "outside this graph")
            return None, nodes[::-1], f"{name!r} comes from {where}"
        if is_op(node, PRODUCERS):
            return node, nodes[::-1], ""
        if not is_op(node, LOOK_THROUGH) or data_input(node, index) is None:
            return node, nodes[::-1], f"{name!r} comes from {node.op_type} node {node_label(node)!r}"
        why = boundary(node, index)
        if why is not None:
            return node, nodes[::-1], f"{name!r} comes from {node.op_type} node {node_label(node)!r} ({why})"
        nodes.append(node)
        name = data_input(node, index)


def walk_down(name: str, index: GraphIndex) -> Tuple[List[onnx.NodeProto], List[onnx.NodeProto]]:
    """(look-through nodes from `name` on, each the only reader of the one before; the readers at the end)."""
    nodes: List[onnx.NodeProto] = []
    while True:
        readers = index.value_readers(name)
        if len(readers) != 1 or index.is_graph_output(name):
            return nodes, readers
        node = readers[0]
        if not is_op(node, LOOK_THROUGH) or data_input(node, index) != name or boundary(node, index) is not None:
            return nodes, readers
        nodes.append(node)
        name = node.output[0]


def per_channel(value: np.ndarray, channels: Channels) -> Optional[np.ndarray]:
    """`value` as a float64 [count] vector when, broadcast against the tensor, it applies one number per channel of
    its channel axis and changes no shape; None otherwise (and for any non-scalar when the rank is unknown)."""
    if value.size == 1 and (value.ndim <= 1 or (channels.dims is not None and value.ndim <= len(channels.dims))):
        return np.full(channels.count, value.astype(np.float64).reshape(-1)[0])
    if channels.dims is None or value.ndim > len(channels.dims):
        return None
    rank = len(channels.dims)
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[channels.axis] == channels.count and all(d == 1 for i, d in enumerate(shape) if i != channels.axis):
        return value.astype(np.float64).reshape(-1)
    return None


def track(nodes: List[onnx.NodeProto], index: GraphIndex, channels: Channels) -> Tuple[Channels, Chain]:
    """Follow the channels through look-through nodes in data-flow order and compose their affine steps.

    Refuses at the first node that may move an element out of its channel, a constant that is not per channel, a
    cast to a non-float type, or a division by zero.
    """
    scale, shift = np.ones(channels.count), np.zeros(channels.count)
    for node in nodes:
        op = node.op_type
        if op in AFFINE:
            data = data_input(node, index)
            position = list(node.input).index(data)
            constant = index.constant(node.input[1 - position])
            if not float_dtype(constant.dtype):
                raise Refuse(f"{op} {node_label(node)!r} constant has dtype {constant.dtype.name}")
            values = per_channel(constant, channels)
            if values is None:
                raise Refuse(f"{op} {node_label(node)!r} constant of shape {list(constant.shape)} is not one value "
                             f"per channel of axis {channels.axis} (rank "
                             f"{len(channels.dims) if channels.dims is not None else 'unknown'})")
            if op == "Div" and not np.all(values):
                raise Refuse(f"Div {node_label(node)!r} divides by a constant that contains 0")
            scale, shift = compose_affine(scale, shift, op, values, position == 0)
        elif op in AVERAGES:
            channels = average(node, index, channels)
        elif op in ("Identity",):
            pass
        elif op == "Cast":
            why = boundary(node, index)
            if why is not None:
                raise Refuse(f"Cast {node_label(node)!r}: {why}")
        else:
            if channels.dims is None:
                raise Refuse(f"{op} {node_label(node)!r}: the rank of its input is unknown, so it may move the "
                             "channel axis")
            channels = relocate(node, channels, view_dims(node, index, channels.dims))
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise Refuse("the chain's combined scale or shift overflows")
    return channels, Chain(list(nodes), scale, shift)


def require_single_readers(nodes: List[onnx.NodeProto], index: GraphIndex) -> None:
    """Each look-through node's output must be read only by the next node of the chain, and be no graph output."""
    for node, following in zip(nodes, nodes[1:]):
        require_exclusive(index, node.output[0], following, f"{node.op_type} {node_label(node)!r}")


def bypass_affine(edit, nodes: List[onnx.NodeProto], index: GraphIndex, kept: str) -> str:
    """Plan the removal of the chain's Mul/Add/Sub/Div nodes (their map is folded); the name of the last tensor the
    chain still computes, `kept` when no view follows it."""
    for node in nodes:
        if node.op_type in AFFINE:
            edit.bypass(node, list(node.input).index(data_input(node, index)))
        else:
            kept = node.output[0]
    return kept
