"""The look-through table: every op the chain walk (rules.chain) may cross between a BN and what absorbs it, as one
entry that says

- data_input: which input carries the run-time data it passes on (None: this node cannot be crossed);
- boundary: why this node cannot be crossed at all, when it cannot (a Cast that rounds);
- commutes: which per-channel maps cross it exactly: a scale (x * s), a shift (x + t), or both, and whether a
  negative scale does too (a max turns into a min under one);
- channels: where the channels are after it, and its output dims (Refuse when an element may leave its channel);
- step: for a per-channel affine step (Add / Sub / Mul / Div by a constant), its own map, which the fold absorbs
  and removes (`removed`); views and pools stay in the graph.

Adding a look-through op is one entry here and its tests. An op with no entry stops the walk: it is a boundary,
never a default branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from ..graph import NUMPY_ELEMENT_TYPES, GraphIndex, NotConstant, node_label
from .affine import compose_affine
from .base import Refuse, rank_unknown, read_attribute
from .views import (Channels, Size, axes_of, flatten_dims, per_channel, relocate, reshape_dims, sizes_of,
                    squeeze_dims, unsqueeze_dims)


@dataclass(frozen=True)
class Commutes:
    """Which per-channel maps cross an op exactly; `why` says what breaks for the one that does not.
    `negative_scale` False: a scale crosses only where every channel's is >= 0 (order-taking ops: max of s * x is
    s times the max of x for s >= 0, but the min for s < 0)."""

    scale: bool = True
    shift: bool = True
    why: str = ""
    negative_scale: bool = True


BOTH = Commutes()


@dataclass(frozen=True)
class Step:
    """A per-channel affine step: `op`(x, values) (or `op`(values, x) when not data_first)."""

    op: str
    values: np.ndarray
    data_first: bool

    def after(self, scale: np.ndarray, shift: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The map x * scale + shift followed by this step, composed in float64."""
        return compose_affine(scale, shift, self.op, self.values, self.data_first)


class LookThrough:
    """One op the walk may cross; subclasses fill in what differs from a plain one-input, channel-keeping op."""

    op_type = ""
    removed = False  # an affine step: the fold absorbs its map and removes the node
    scales = shifts = False  # an affine step that scales / shifts (a decomposed BN needs both kinds)

    def data_input(self, node: onnx.NodeProto, index: GraphIndex) -> Optional[str]:
        return node.input[0] if node.input and node.input[0] else None

    def boundary(self, node: onnx.NodeProto, index: GraphIndex) -> Optional[str]:
        return None

    def commutes(self, node: onnx.NodeProto, index: GraphIndex) -> Commutes:
        return BOTH

    def channels(self, node: onnx.NodeProto, index: GraphIndex, channels: Channels) -> Channels:
        return channels

    def step(self, node: onnx.NodeProto, index: GraphIndex, channels: Channels) -> Optional["Step"]:
        return None

    def output_rank(self, node: onnx.NodeProto) -> Optional[int]:
        """Its output's rank whatever its input's, when the op fixes it (Flatten: 2); None otherwise."""
        return None


def _known_rank(node: onnx.NodeProto, channels: Channels, what: str) -> None:
    if channels.dims is None:
        raise Refuse(f"{node.op_type} {node_label(node)!r} may {what}: {rank_unknown(node.input[0])}")


class Identity(LookThrough):
    op_type = "Identity"


# --- Cast -----------------------------------------------------------------------------------------------------

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


class Cast(LookThrough):
    """Exact for every value (the same or a wider float type): both maps cross it. A narrowing Cast rounds, so a map
    moved across it would be rounded differently (and may overflow where the original does not): a boundary."""

    op_type = "Cast"

    def boundary(self, node, index):
        try:
            to = read_attribute(node, "to", 0)
        except Refuse as why:
            return str(why)
        target = np.dtype(helper.tensor_dtype_to_np_dtype(to)) if to in NUMPY_ELEMENT_TYPES else None
        source = index.dtype(node.input[0])
        if source is None:
            return f"the element type of its input {node.input[0]!r} is unknown, so it may round"
        if not (float_dtype(source) and float_dtype(target)):
            return (f"it casts {source.name} to {target.name if target is not None else 'a non-numeric type'}, "
                    "not float to float")
        if not exact_cast(source, target):
            return f"it narrows {source.name} to {target.name}, rounding values a map moved across it would not see"
        return None


# --- views: reshape-like ops keep every element in its channel when the channel count and inner size stay ------

class View(LookThrough):
    def out_dims(self, node, index, dims):
        raise NotImplementedError

    def channels(self, node, index, channels):
        _known_rank(node, channels, "move the channel axis")
        return relocate(node, channels, self.out_dims(node, index, channels.dims))


class Reshape(View):
    op_type = "Reshape"

    def out_dims(self, node, index, dims):
        return reshape_dims(node, index, dims)


class Flatten(View):
    op_type = "Flatten"

    def output_rank(self, node):
        return 2

    def out_dims(self, node, index, dims):
        return flatten_dims(node, dims)


class Squeeze(View):
    op_type = "Squeeze"

    def out_dims(self, node, index, dims):
        return squeeze_dims(node, index, dims)


class Unsqueeze(View):
    op_type = "Unsqueeze"

    def out_dims(self, node, index, dims):
        return unsqueeze_dims(node, index, dims)


class Transpose(LookThrough):
    """Moves axes, and the channel axis with them: input axis a becomes output axis perm.index(a)."""

    op_type = "Transpose"

    def channels(self, node, index, channels):
        _known_rank(node, channels, "move the channel axis")
        rank = len(channels.dims)
        perm = read_attribute(node, "perm", None)
        perm = list(range(rank))[::-1] if perm is None else [int(p) + rank if p < 0 else int(p) for p in perm]
        if sorted(perm) != list(range(rank)):
            raise Refuse(f"Transpose {node_label(node)!r} has perm {perm} for rank {rank}")
        return Channels(channels.count, [channels.dims[p] for p in perm], perm.index(channels.axis))


class Pad(LookThrough):
    """Pads (or crops) the non-channel axes, each element staying in its channel. reflect / edge / wrap copy values
    of the same channel, so both maps cross; a constant border does not follow the map: a zero border commutes with
    a scale only (0 * s = 0, but 0 + t is not 0), another constant with neither. Padding the channel axis would add
    channels: refused."""

    op_type = "Pad"

    def _read(self, node, index, rank=None):
        """(begin and end per axis, mode, border value) from the attributes (opset < 11) or the inputs; without
        `rank`, the axes are those the pads list (2 per axis)."""
        mode = read_attribute(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        try:
            if len(node.input) > 1 and node.input[1]:
                pads = [int(p) for p in index.constant(node.input[1]).reshape(-1)]
                value = index.constant(node.input[2]).reshape(-1) if len(node.input) > 2 and node.input[2] else [0]
                axes = [int(a) for a in index.constant(node.input[3]).reshape(-1)] \
                    if len(node.input) > 3 and node.input[3] else None
            else:
                pads = list(read_attribute(node, "pads", None) or read_attribute(node, "paddings", None) or [])
                value, axes = [read_attribute(node, "value", 0.0)], None
        except NotConstant as why:
            raise Refuse(f"Pad {node_label(node)!r} pads, value or axes are not constants: {why}") from None
        axes = list(range(len(pads) // 2 if rank is None else rank)) if axes is None else \
            [a + rank if a < 0 and rank is not None else a for a in axes]
        if len(pads) != 2 * len(axes) or rank is not None and any(not 0 <= a < rank for a in axes):
            raise Refuse(f"Pad {node_label(node)!r} has pads {pads} for axes {axes} of rank {rank}")
        widths = {axis: (pads[i], pads[i + len(axes)]) for i, axis in enumerate(axes)}
        return widths, mode, float(np.asarray(value, dtype=np.float64)[0])

    def channels(self, node, index, channels):
        _known_rank(node, channels, "pad the channel axis")
        widths, _, _ = self._read(node, index, len(channels.dims))
        if widths.get(channels.axis, (0, 0)) != (0, 0):
            raise Refuse(f"Pad {node_label(node)!r} pads the channel axis {channels.axis}, adding channels")
        dims = [Size(size.known + sum(widths[axis])) if axis in widths and not size.symbols else
                (Size.unknown() if axis in widths and any(widths[axis]) else size)
                for axis, size in enumerate(channels.dims)]
        return Channels(channels.count, dims, channels.axis)

    def commutes(self, node, index):
        widths, mode, value = self._read(node, index)
        if mode != "constant" or all(begin <= 0 and end <= 0 for begin, end in widths.values()):
            return BOTH
        if value == 0.0:
            return Commutes(scale=True, shift=False, why="its border of zeros would not receive the shift")
        return Commutes(scale=False, shift=False, why=f"its border of {value:g} would be neither scaled nor shifted")


# --- per-channel affine steps ---------------------------------------------------------------------------------

class Affine(LookThrough):
    """op(x, c) or op(c, x) with a constant c that is one value per channel: x * s + t, composed in float64."""

    removed = True

    def data_input(self, node, index):
        if len(node.input) != 2 or node.input[0] == node.input[1]:
            return None
        constant = [index.is_constant(name) for name in node.input]
        if constant.count(False) != 1:
            return None
        data = constant.index(False)
        if self.op_type == "Div" and data == 1:
            return None  # c / x is not affine in x
        return node.input[data]

    def step(self, node, index, channels):
        position = list(node.input).index(self.data_input(node, index))
        constant = index.constant(node.input[1 - position])
        if not float_dtype(constant.dtype):
            raise Refuse(f"{node.op_type} {node_label(node)!r} constant has dtype {constant.dtype.name}")
        values = per_channel(constant, channels)
        if values is None and channels.dims is None:
            raise Refuse(f"{node.op_type} {node_label(node)!r} constant of shape {list(constant.shape)} cannot be "
                         f"matched to the channels: {rank_unknown(node.input[position])}")
        if values is None:
            raise Refuse(f"{node.op_type} {node_label(node)!r} constant of shape {list(constant.shape)} is not one "
                         f"value per channel of axis {channels.axis} (rank {len(channels.dims)})")
        if node.op_type == "Div" and not np.all(values):
            raise Refuse(f"Div {node_label(node)!r} divides by a constant that contains 0")
        return Step(node.op_type, values, position == 0)


class Add(Affine):
    op_type, shifts = "Add", True


class Sub(Affine):
    op_type, shifts = "Sub", True


class Mul(Affine):
    op_type, scales = "Mul", True


class Div(Affine):
    op_type, scales = "Div", True


class Neg(LookThrough):
    """-x: the per-channel affine step x * -1 (a negated branch, `a + (-b)`)."""

    op_type, removed, scales = "Neg", True, True

    def step(self, node, index, channels):
        return Step("Mul", np.full(channels.count, -1.0), True)


# --- pools and reductions of each channel's own plane: averages (the average of x * s + t is the average of x,
# times s, plus t) and maxima (the max of x * s + t is the max of x, times s, plus t for any shift and a scale >= 0,
# exactly in floats too, rounding being monotone; a negative scale turns the max into a min) ---------------------

MAX = Commutes(negative_scale=False, why="a negative scale turns its max into a min")


class Pool(LookThrough):
    """Pools windows of each channel's plane (axes 2 on): output spatial dims as declared, or 1 (`whole_plane`)."""

    whole_plane = False

    def channels(self, node, index, channels):
        _known_rank(node, channels, "pool the channel axis")
        if channels.axis != 1:
            raise Refuse(f"{node.op_type} {node_label(node)!r} pools axis {channels.axis}'s neighbours; channels "
                         "are not on axis 1")
        rank = len(channels.dims)
        pooled = [Size(1)] * rank if self.whole_plane else sizes_of(index.dims(node.output[0]), rank)
        return Channels(channels.count, channels.dims[:2] + pooled[2:], 1)


class GlobalAveragePool(Pool):
    op_type, whole_plane = "GlobalAveragePool", True


class AveragePool(Pool):
    """A scale crosses it always; a shift only when every window's divisor counts real elements alone: no padding
    (explicit pads 0, VALID, or SAME with a 1-sized kernel) and ceil_mode=0, or count_include_pad=0. A zero it
    pads in and counts would not receive the shift."""

    op_type = "AveragePool"

    def commutes(self, node, index):
        if not read_attribute(node, "count_include_pad", 0):
            return BOTH
        auto_pad = read_attribute(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        kernel = list(read_attribute(node, "kernel_shape", None) or [])
        pads = list(read_attribute(node, "pads", None) or [])
        padded = auto_pad in ("SAME_UPPER", "SAME_LOWER") and any(k != 1 for k in kernel) or \
            auto_pad == "NOTSET" and any(pads)
        if padded:
            return Commutes(scale=True, shift=False, why="it pads with zeros and counts them (count_include_pad=1)")
        if read_attribute(node, "ceil_mode", 0):
            return Commutes(scale=True, shift=False, why="ceil_mode=1 with count_include_pad=1 may count positions "
                                                         "past the border")
        return BOTH


class MaxPool(Pool):
    """Pads with -inf: its padding, strides, dilations and ceil_mode do not matter. Its second output, Indices
    (where each max is), is a boundary when read: a moved map rounds values differently, and a scale of 0 makes a
    window's elements ties, so which one is the max may change."""

    op_type = "MaxPool"

    def boundary(self, node, index):
        indices = node.output[1] if len(node.output) > 1 else ""
        if indices and (index.users(indices) or index.is_graph_output(indices)):
            return f"its Indices output {indices!r} is read, and a map moved across it may change which element is " \
                   "a window's max"
        return None

    def commutes(self, node, index):
        return MAX


class GlobalMaxPool(Pool):
    op_type, whole_plane = "GlobalMaxPool", True

    def commutes(self, node, index):
        return MAX


class ReduceMean(LookThrough):
    """Reduces non-channel axes (the attribute, or the constant `axes` input from opset 18 on)."""

    op_type = "ReduceMean"

    def channels(self, node, index, channels):
        _known_rank(node, channels, "reduce the channel axis")
        rank = len(channels.dims)
        axes = axes_of(node, index)
        if not axes:
            raise Refuse(f"{node.op_type} {node_label(node)!r} reduces every axis, the channel axis included")
        axes = sorted({a + rank if a < 0 else a for a in axes})
        if channels.axis in axes:
            raise Refuse(f"{node.op_type} {node_label(node)!r} reduces over the channel axis")
        if read_attribute(node, "keepdims", 1):
            dims = [Size(1) if position in axes else size for position, size in enumerate(channels.dims)]
            return Channels(channels.count, dims, channels.axis)
        dims = [size for position, size in enumerate(channels.dims) if position not in axes]
        return Channels(channels.count, dims, channels.axis - sum(1 for a in axes if a < channels.axis))


class ReduceMax(ReduceMean):
    op_type = "ReduceMax"

    def commutes(self, node, index):
        return MAX


TABLE: Dict[str, LookThrough] = {entry.op_type: entry for entry in (
    Identity(), Cast(), Reshape(), Flatten(), Squeeze(), Unsqueeze(), Transpose(), Pad(), Add(), Sub(), Mul(), Div(),
    Neg(), AveragePool(), GlobalAveragePool(), ReduceMean(), MaxPool(), GlobalMaxPool(), ReduceMax())}
