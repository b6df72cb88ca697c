"""The chain walk: from a BN up to the op that can absorb it (forward), or down to the ops that can (backward),
through any sequence of look-through ops, each the only reader of what it reads.

Look-through ops, the one table the rules read:
- views, which move no element out of its channel: Identity, Cast (float to float), Reshape, Flatten, Squeeze,
  Unsqueeze. A view keeps channel membership exactly when the channel count and the number of elements after the
  channel axis ("inner size") are the same before and after it: an element's channel is (offset // inner) % C.
  Dims are tracked as products of known sizes and unknown symbols, so `Reshape(x, [0, C, -1])` is proven on
  inputs whose spatial size is dynamic;
- per-channel affine steps: Add, Sub, Mul, Div by a constant that broadcasts along the channel axis only (Div
  only as the divisor), composed in float64;
- spatial averages: GlobalAveragePool, and ReduceMean over axes that exclude the channel axis: an average of
  x * s + t is the average of x, times s, plus t.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from ..graph import NUMPY_ELEMENT_TYPES, GraphIndex, NotConstant, is_op, node_label
from .affine import compose_affine
from .base import Refuse, read_attribute, require_exclusive
from .producers import PRODUCERS

VIEWS = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
AFFINE = ("Add", "Sub", "Mul", "Div")
AVERAGES = ("GlobalAveragePool", "ReduceMean")
LOOK_THROUGH = VIEWS + AFFINE + AVERAGES
SCALING, SHIFTING = ("Mul", "Div"), ("Add", "Sub")

_symbols = itertools.count()


class Size:
    """A dimension or a product of dimensions: a known integer factor times unknown symbols."""

    __slots__ = ("known", "symbols")

    def __init__(self, known: int = 1, symbols: Tuple[int, ...] = ()):
        self.known = known
        self.symbols = tuple(sorted(symbols))

    @classmethod
    def unknown(cls) -> "Size":
        return cls(1, (next(_symbols),))

    def __mul__(self, other: "Size") -> "Size":
        return Size(self.known * other.known, self.symbols + other.symbols)

    def __eq__(self, other) -> bool:
        if isinstance(other, int):
            return not self.symbols and self.known == other
        return isinstance(other, Size) and self.known == other.known and self.symbols == other.symbols

    def __hash__(self):
        return hash((self.known, self.symbols))

    def divided_by(self, other: "Size") -> Optional["Size"]:
        """The exact quotient, or None when it is not provably one."""
        remaining = list(self.symbols)
        for symbol in other.symbols:
            if symbol not in remaining:
                return None
            remaining.remove(symbol)
        if other.known == 0 or self.known % other.known:
            return None
        return Size(self.known // other.known, tuple(remaining))

    def __repr__(self):
        return "x".join([str(self.known)] * (self.known != 1 or not self.symbols) + ["?"] * len(self.symbols))


def product(sizes) -> Size:
    total = Size()
    for size in sizes:
        total = total * size
    return total


def sizes_of(dims: Optional[List[Optional[int]]], rank: Optional[int]) -> Optional[List[Size]]:
    """Sizes for declared dims (unknown ones become symbols); None when not even the rank is known."""
    if dims is not None and (rank is None or len(dims) == rank):
        return [Size(d) if d is not None and d > 0 else Size.unknown() for d in dims]
    return [Size.unknown() for _ in range(rank)] if rank is not None else None


@dataclass
class Channels:
    """Where the channels are in one tensor of the chain: its dims (None when its rank is unknown) and axis."""

    count: int
    dims: Optional[List[Size]]
    axis: Optional[int]

    def inner(self) -> Optional[Size]:
        return None if self.dims is None else product(self.dims[self.axis + 1:])


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
        if not is_op(node, LOOK_THROUGH) or data_input(node, index) != name:
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


def _is_float(dtype) -> bool:
    return dtype is not None and (np.dtype(dtype).kind == "f" or np.dtype(dtype).name == "bfloat16")


def _relocate(node: onnx.NodeProto, channels: Channels, out_dims: List[Size]) -> Channels:
    """The channels after a view producing `out_dims`: the axis of the same size with the same inner size."""
    inner = channels.inner()
    for axis, size in enumerate(out_dims):
        if size == channels.count and product(out_dims[axis + 1:]) == inner:
            return Channels(channels.count, out_dims, axis)
    raise Refuse(f"{node.op_type} {node_label(node)!r} may move elements out of their channel (dims "
                 f"{channels.dims} -> {out_dims}, channels on axis {channels.axis})")


def _view_dims(node: onnx.NodeProto, index: GraphIndex, dims: List[Size]) -> List[Size]:
    """The output dims of a view from its input dims, following the ONNX definitions."""
    op = node.op_type
    rank = len(dims)
    if op == "Reshape":
        if len(node.input) > 1:
            try:
                target = [int(d) for d in index.constant(node.input[1]).reshape(-1)]
            except NotConstant as why:
                raise Refuse(f"Reshape {node_label(node)!r} target is not a constant: {why}") from None
        else:
            target = list(read_attribute(node, "shape", []) or [])
        copies = not read_attribute(node, "allowzero", 0)
        out: List[Optional[Size]] = []
        for position, d in enumerate(target):
            if d == 0 and copies:
                if position >= rank:
                    raise Refuse(f"Reshape {node_label(node)!r} copies a dimension past the input's rank")
                out.append(dims[position])
            elif d == -1:
                out.append(None)
            elif d >= 0:
                out.append(Size(d))
            else:
                raise Refuse(f"Reshape {node_label(node)!r} has an invalid target {target}")
        if out.count(None) > 1:
            raise Refuse(f"Reshape {node_label(node)!r} has an invalid target {target}")
        if None in out:
            rest = product(size for size in out if size is not None)
            quotient = product(dims).divided_by(rest)
            out[out.index(None)] = quotient if quotient is not None else Size.unknown()
        return out
    if op == "Flatten":
        axis = int(read_attribute(node, "axis", 1))
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis <= rank:
            raise Refuse(f"Flatten {node_label(node)!r} has axis {axis} for rank {rank}")
        return [product(dims[:axis]), product(dims[axis:])]
    axes = read_attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        try:
            axes = [int(a) for a in index.constant(node.input[1]).reshape(-1)]
        except NotConstant as why:
            raise Refuse(f"{op} {node_label(node)!r} axes are not a constant: {why}") from None
    if op == "Squeeze":
        if not axes:
            if axes is not None or any(size.symbols for size in dims):
                raise Refuse(f"Squeeze {node_label(node)!r} without explicit axes on dims {dims}")
            return [size for size in dims if not size == 1]
        axes = sorted({a + rank if a < 0 else a for a in axes})
        if any(not 0 <= a < rank or not dims[a] == 1 for a in axes):
            raise Refuse(f"Squeeze {node_label(node)!r} axes {axes} are not all of size 1 in {dims}")
        return [size for position, size in enumerate(dims) if position not in axes]
    # Unsqueeze
    if not axes:
        raise Refuse(f"Unsqueeze {node_label(node)!r} has no axes")
    out_rank = rank + len(axes)
    axes = {a + out_rank if a < 0 else a for a in axes}
    remaining = iter(dims)
    return [Size(1) if position in axes else next(remaining) for position in range(out_rank)]


def _average(node: onnx.NodeProto, index: GraphIndex, channels: Channels) -> Channels:
    """The channels after a spatial average (the map commutes with it)."""
    if channels.dims is None:
        raise Refuse(f"{node.op_type} {node_label(node)!r}: the rank of its input is unknown")
    rank = len(channels.dims)
    if node.op_type == "GlobalAveragePool":
        if channels.axis != 1:
            raise Refuse(f"GlobalAveragePool {node_label(node)!r} averages axis {channels.axis}'s neighbours; "
                         "channels are not on axis 1")
        return Channels(channels.count, channels.dims[:2] + [Size(1)] * (rank - 2), 1)
    axes = read_attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        try:
            axes = [int(a) for a in index.constant(node.input[1]).reshape(-1)]
        except NotConstant as why:
            raise Refuse(f"ReduceMean {node_label(node)!r} axes are not a constant: {why}") from None
    if not axes:
        raise Refuse(f"ReduceMean {node_label(node)!r} reduces every axis, the channel axis included")
    axes = sorted({a + rank if a < 0 else a for a in axes})
    if channels.axis in axes:
        raise Refuse(f"ReduceMean {node_label(node)!r} averages over the channel axis")
    if read_attribute(node, "keepdims", 1):
        dims = [Size(1) if position in axes else size for position, size in enumerate(channels.dims)]
        return Channels(channels.count, dims, channels.axis)
    dims = [size for position, size in enumerate(channels.dims) if position not in axes]
    return Channels(channels.count, dims, channels.axis - sum(1 for a in axes if a < channels.axis))


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
            if not _is_float(constant.dtype):
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
            channels = _average(node, index, channels)
        elif op in ("Identity",):
            pass
        elif op == "Cast":
            to = read_attribute(node, "to", 0)
            after = helper.tensor_dtype_to_np_dtype(to) if to in NUMPY_ELEMENT_TYPES else None
            if not (_is_float(index.dtype(node.input[0])) and _is_float(after)):
                raise Refuse(f"Cast {node_label(node)!r} is not a float-to-float cast")
        else:
            if channels.dims is None:
                raise Refuse(f"{op} {node_label(node)!r}: the rank of its input is unknown, so it may move the "
                             "channel axis")
            channels = _relocate(node, channels, _view_dims(node, index, channels.dims))
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise Refuse("the chain's combined scale or shift overflows")
    return channels, Chain(list(nodes), scale, shift)


def require_single_readers(nodes: List[onnx.NodeProto], index: GraphIndex) -> None:
    """Each look-through node's output must be read only by the next node of the chain, and be no graph output."""
    for node, following in zip(nodes, nodes[1:]):
        require_exclusive(index, node.output[0], following, f"{node.op_type} {node_label(node)!r}")
