"""How views move a tensor's channels, for the look-through table (rules.look_through).

A view (Reshape, Flatten, Squeeze, Unsqueeze) keeps every element in its channel exactly when the channel count and
the number of elements after the channel axis ("inner size") are the same before and after it: an element's
channel is (offset // inner) % C. Dims are products of known sizes and unknown symbols (Size), so a Reshape of a
tensor with dynamic dims is still proven where the symbols cancel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import onnx

from ..graph import GraphIndex, NotConstant, node_label
from .base import Refuse, read_attribute

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


def axes_of(node: onnx.NodeProto, index: GraphIndex) -> Optional[List[int]]:
    """Squeeze / Unsqueeze / ReduceMean axes: the attribute (older opsets) or the constant second input."""
    axes = read_attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        try:
            axes = [int(a) for a in index.constant(node.input[1]).reshape(-1)]
        except NotConstant as why:
            raise Refuse(f"{node.op_type} {node_label(node)!r} axes are not a constant: {why}") from None
    return None if axes is None else list(axes)


def relocate(node: onnx.NodeProto, channels: Channels, out_dims: List[Size]) -> Channels:
    """The channels after a view producing `out_dims`: the axis of the same size with the same inner size."""
    inner = channels.inner()
    for axis, size in enumerate(out_dims):
        if size == channels.count and product(out_dims[axis + 1:]) == inner:
            return Channels(channels.count, out_dims, axis)
    raise Refuse(f"{node.op_type} {node_label(node)!r} may move elements out of their channel (dims "
                 f"{channels.dims} -> {out_dims}, channels on axis {channels.axis})")


def reshape_dims(node: onnx.NodeProto, index: GraphIndex, dims: List[Size]) -> List[Size]:
    """Reshape's output dims from its input dims (ONNX: 0 copies the input dim unless allowzero, -1 is inferred)."""
    rank = len(dims)
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


def flatten_dims(node: onnx.NodeProto, dims: List[Size]) -> List[Size]:
    rank = len(dims)
    axis = int(read_attribute(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise Refuse(f"Flatten {node_label(node)!r} has axis {axis} for rank {rank}")
    return [product(dims[:axis]), product(dims[axis:])]


def squeeze_dims(node: onnx.NodeProto, index: GraphIndex, dims: List[Size]) -> List[Size]:
    rank = len(dims)
    axes = axes_of(node, index)
    if not axes:
        if axes is not None or any(size.symbols for size in dims):
            raise Refuse(f"Squeeze {node_label(node)!r} without explicit axes on dims {dims}")
        return [size for size in dims if not size == 1]
    axes = sorted({a + rank if a < 0 else a for a in axes})
    if any(not 0 <= a < rank or not dims[a] == 1 for a in axes):
        raise Refuse(f"Squeeze {node_label(node)!r} axes {axes} are not all of size 1 in {dims}")
    return [size for position, size in enumerate(dims) if position not in axes]


def unsqueeze_dims(node: onnx.NodeProto, index: GraphIndex, dims: List[Size]) -> List[Size]:
    axes = axes_of(node, index)
    if not axes:
        raise Refuse(f"Unsqueeze {node_label(node)!r} has no axes")
    out_rank = len(dims) + len(axes)
    axes = [a + out_rank if a < 0 else a for a in axes]
    if len(axes) != len(set(axes)) or any(not 0 <= a < out_rank for a in axes):
        raise Refuse(f"Unsqueeze {node_label(node)!r} has axes {sorted(axes)} for output rank {out_rank}")
    remaining = iter(dims)
    return [Size(1) if position in axes else next(remaining) for position in range(out_rank)]
