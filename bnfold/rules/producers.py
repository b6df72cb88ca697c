"""The producer table: for each op a BN can fold into, one entry that says where its channels are and how it absorbs
a per-channel affine map x * scale + shift.

- forward: the map acts on the op's *output* channels (producer -> BN): the weight's output channels are scaled
  and the bias becomes bias * scale + shift;
- backward: the map acts on the op's *input* channels (BN -> consumer): the weight's input channels are scaled and
  the shift, pushed through the weight, joins the bias.

Every rule, and the chain walk, reads this table: adding an op that can absorb a BN is one entry here and its tests.
An entry plans its changes into an Edit, or raises Refuse with the reason; it never changes the graph itself.

Over 300 lines on purpose: the table is the one place every producer lives, four entries of forward and
backward arithmetic each.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper

from ..graph import Edit, GraphIndex, node_label
from .affine import conv_input_affine, fold_bias, rows_affine, scale_conv_transpose_weight
from .base import Refuse, constant_input, read_attribute, require_float, set_exact, tensor_hint
from .weights import Weight, read_plain_weight, read_weight, scale_weight


class Producer:
    """An op that can absorb a per-channel affine map; subclasses fill in its geometry and arithmetic."""

    op_type = ""
    skip_name = ""  # the --skip name that keeps BNs out of this op
    self_describing = True  # its weights say all a fold needs (no tensor types): shape inference may be skipped
    kernel = False  # it slides a kernel: the local check sizes unknown spatial dims to fit it
    known_output_rank: Optional[int] = None  # its output's rank whatever its inputs (a Gemm: 2)
    output_axis = 1  # its output channels' axis, counted from the end when negative (whatever the rank)

    def output_rank(self, node: onnx.NodeProto, index: GraphIndex) -> Optional[int]:
        raise NotImplementedError

    def input_rank(self, node: onnx.NodeProto, index: GraphIndex) -> Optional[int]:
        """The rank of the data input (input 0), which a backward fold's channel axis must match."""
        raise NotImplementedError

    def input_dims(self, node: onnx.NodeProto, index: GraphIndex) -> Optional[List[Optional[int]]]:
        """What the weights say of the data input's dims (None where they say nothing), for the local check of a
        piece whose input the model does not declare; Refuse or NotConstant when the weights cannot be read."""
        raise NotImplementedError

    def output_channel_axis(self, rank: int) -> int:
        """The axis of the output that holds the channels forward folds scale."""
        return 1

    def input_channel_axis(self, rank: int) -> int:
        """The axis of the data input (input 0) that backward folds scale."""
        return 1

    def output_channels(self, node: onnx.NodeProto, index: GraphIndex) -> int:
        raise NotImplementedError

    def input_channels(self, node: onnx.NodeProto, index: GraphIndex) -> int:
        raise NotImplementedError

    def forward(self, node, index, scale, shift, edit: Edit) -> Optional[onnx.NodeProto]:
        """Plan the output channels' map; return a node inserted after `node` that now computes its output."""
        raise NotImplementedError

    def backward(self, node, index, scale, shift, edit: Edit) -> Optional[onnx.NodeProto]:
        """Plan the input channels' map; return a node inserted after `node` that now computes its output."""
        raise NotImplementedError


def _conv_weight(node: onnx.NodeProto, index: GraphIndex) -> Weight:
    weight = read_weight(index, node, 1, "weight")
    require_float(weight.value, "weight", node)
    if weight.value.ndim < 3:
        raise Refuse(f"{node.op_type} weight has rank {weight.value.ndim}; expected [C, C/group, k...]")
    return weight


def _group(node: onnx.NodeProto) -> int:
    group = int(read_attribute(node, "group", 1))
    if group < 1:
        raise Refuse(f"{node.op_type} {node_label(node)!r} has group={group}")
    return group


def _plan_bias(edit: Edit, node: onnx.NodeProto, index: GraphIndex, exact: np.ndarray, dtype,
               present: Optional[np.ndarray]) -> None:
    hint = tensor_hint(node, 2, "bnfold") if present is not None else tensor_hint(node, 1, "bias")
    set_exact(edit, node, 2, exact, present.dtype if present is not None else dtype, hint)


def _forward_bias(edit, node, index, channels: int, scale, shift, dtype) -> None:
    """Conv / ConvTranspose: bias (input 2, created when missing) becomes bias * scale + shift."""
    bias = constant_input(index, node, 2, "bias")
    if bias is None and not np.any(shift):
        return
    if bias is not None and bias.size != channels:
        raise Refuse(f"{node.op_type} bias has {bias.size} values for {channels} output channels")
    _plan_bias(edit, node, index, fold_bias(bias, scale, shift), dtype, bias)


def _padding(conv: onnx.NodeProto, kernel) -> Optional[str]:
    """How the Conv pads its input, or None when it provably pads nothing (SAME with a 1x1 kernel pads 0)."""
    auto_pad = read_attribute(conv, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return None if all(k == 1 for k in kernel) else f"auto_pad={auto_pad} with kernel {list(kernel)}"
    pads = list(read_attribute(conv, "pads", None) or [])
    return f"pads={pads}" if any(pads) else None


class Conv(Producer):
    """Weight [C_out, C_in/group, k...]: output channels on axis 0, input channels grouped on axis 1."""

    op_type, skip_name = "Conv", "conv"
    kernel = True

    def output_rank(self, node, index):
        return _conv_weight(node, index).value.ndim

    def input_rank(self, node, index):
        return _conv_weight(node, index).value.ndim

    def input_dims(self, node, index):
        weight = _conv_weight(node, index).value
        return [None, weight.shape[1] * _group(node)] + [None] * (weight.ndim - 2)

    def output_channels(self, node, index):
        return _conv_weight(node, index).value.shape[0]

    def input_channels(self, node, index):
        return _conv_weight(node, index).value.shape[1] * _group(node)

    def forward(self, node, index, scale, shift, edit):
        weight = _conv_weight(node, index)
        scale_weight(edit, weight, scale, 0)
        _forward_bias(edit, node, index, weight.value.shape[0], scale, shift, weight.value.dtype)
        return None

    def backward(self, node, index, scale, shift, edit):
        weight = read_plain_weight(index, node, 1, "weight")
        group = _group(node)
        if weight.ndim < 3 or weight.shape[0] % group:
            raise Refuse(f"Conv {node_label(node)!r} weight {list(weight.shape)} does not fit group={group}")
        has_shift = bool(np.any(shift))
        padding = _padding(node, tuple(read_attribute(node, "kernel_shape", None) or weight.shape[2:]))
        if has_shift and padding:
            raise Refuse(f"Conv {node_label(node)!r} pads its input ({padding}) and the shift is not zero: "
                         "the padded zeros would not receive it")
        bias = constant_input(index, node, 2, "bias")
        new_weight, new_bias = conv_input_affine(weight, bias, scale, shift, group)
        set_exact(edit, node, 1, new_weight, weight.dtype, tensor_hint(node, 1, "bnfold"))
        if bias is not None or has_shift:
            _plan_bias(edit, node, index, new_bias, weight.dtype, bias)
        return None


class ConvTranspose(Producer):
    """Weight [C_in, C_out/group, k...]: output channel g * (C_out/group) + j is column j of the rows of group g."""

    op_type, skip_name = "ConvTranspose", "conv_transpose"
    kernel = True

    def output_rank(self, node, index):
        return _conv_weight(node, index).value.ndim

    def input_rank(self, node, index):
        return _conv_weight(node, index).value.ndim

    def input_dims(self, node, index):
        weight = _conv_weight(node, index).value
        return [None, weight.shape[0]] + [None] * (weight.ndim - 2)

    def _checked(self, node, index):
        weight = _conv_weight(node, index)
        group = _group(node)
        if weight.value.shape[0] % group:
            raise Refuse(f"ConvTranspose weight {list(weight.value.shape)} does not fit group={group}")
        return weight, group

    def output_channels(self, node, index):
        weight, group = self._checked(node, index)
        return weight.value.shape[1] * group

    def input_channels(self, node, index):
        return self._checked(node, index)[0].value.shape[0]

    def forward(self, node, index, scale, shift, edit):
        weight, group = self._checked(node, index)
        # With one group the output channels are weight axis 1; with more they interleave over the row groups.
        exact = None if group == 1 else scale_conv_transpose_weight(weight.value, scale, group)
        scale_weight(edit, weight, scale, 1, exact)
        _forward_bias(edit, node, index, weight.value.shape[1] * group, scale, shift, weight.value.dtype)
        return None

    def backward(self, node, index, scale, shift, edit):
        if np.any(shift):
            raise Refuse(f"ConvTranspose {node_label(node)!r} would scatter the shift over overlapping windows, "
                         "which differ at the borders; only a shift of 0 folds backward")
        weight = read_plain_weight(index, node, 1, "weight")
        exact = weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        set_exact(edit, node, 1, exact, weight.dtype, tensor_hint(node, 1, "bnfold"))
        return None


def _matrix(index, node, position, role) -> Weight:
    weight = read_weight(index, node, position, role)
    require_float(weight.value, role, node)
    if weight.value.ndim != 2:
        raise Refuse(f"{node.op_type} {role} has rank {weight.value.ndim}; only a 2-D weight folds")
    return weight


def _plain_matrix(index, node, position, role) -> np.ndarray:
    weight = read_plain_weight(index, node, position, role)
    if weight.ndim != 2:
        raise Refuse(f"{node.op_type} {role} has rank {weight.ndim}; only a 2-D weight folds")
    return weight


class Gemm(Producer):
    """Y = alpha * A' @ B' + beta * C, Y [M, N]: output channels are B's columns (rows with transB=1); the bias C may
    be absent, a scalar, [N] or [1, N]. Backward folds need transA=0 (BN's channels are then A's K axis)."""

    op_type, skip_name = "Gemm", "gemm"
    known_output_rank = 2

    def output_rank(self, node, index):
        return self.known_output_rank

    def input_rank(self, node, index):
        return 2

    def input_dims(self, node, index):
        weight = _matrix(index, node, 1, "B").value
        k = weight.shape[1] if read_attribute(node, "transB", 0) else weight.shape[0]
        return [k, None] if read_attribute(node, "transA", 0) else [None, k]

    def _axis(self, node):
        return 0 if read_attribute(node, "transB", 0) else 1

    def output_channels(self, node, index):
        return _matrix(index, node, 1, "B").value.shape[self._axis(node)]

    def input_channels(self, node, index):
        if read_attribute(node, "transA", 0):
            raise Refuse(f"Gemm {node_label(node)!r} has transA=1: BN's channel axis is the Gemm's M axis, not K")
        return _matrix(index, node, 1, "B").value.shape[1 - self._axis(node)]

    def forward(self, node, index, scale, shift, edit):
        weight = _matrix(index, node, 1, "B")
        axis = self._axis(node)
        channels = weight.value.shape[axis]
        scale_weight(edit, weight, scale, axis)
        bias = constant_input(index, node, 2, "C")
        if bias is None and not np.any(shift):
            return None
        beta = float(read_attribute(node, "beta", 1.0))
        if bias is None:
            per_column, shape = np.zeros(channels), (channels,)
        elif bias.size == 1:
            per_column, shape = np.full(channels, bias.astype(np.float64).reshape(-1)[0]), (channels,)
        elif bias.shape in ((channels,), (1, channels)):
            per_column, shape = bias.astype(np.float64).reshape(-1), bias.shape
        else:
            raise Refuse(f"Gemm bias C has shape {list(bias.shape)}; only a scalar, [N] or [1, N] bias can absorb "
                         "a per-column BN")
        exact = beta * per_column * scale + shift
        _plan_bias(edit, node, index, exact.reshape(shape), weight.value.dtype, bias)
        if beta != 1.0:
            edit.set_attribute(node, "beta", 1.0)
        return None

    def backward(self, node, index, scale, shift, edit):
        """BN scales the K rows of B' (B, or B^T with transB=1); the shift adds alpha * (shift @ B') to Y, so C
        becomes C + (alpha / beta) * (shift @ B')."""
        if read_attribute(node, "transA", 0):
            raise Refuse(f"Gemm {node_label(node)!r} has transA=1: BN's channel axis is the Gemm's M axis, not K")
        weight = _plain_matrix(index, node, 1, "B")
        trans_b = bool(read_attribute(node, "transB", 0))
        rows = weight.T if trans_b else weight
        scaled, added = rows_affine(rows, scale, shift)
        set_exact(edit, node, 1, scaled.T if trans_b else scaled, weight.dtype, tensor_hint(node, 1, "bnfold"))
        if not np.any(added):
            return None
        beta = float(read_attribute(node, "beta", 1.0))
        if beta == 0.0:
            raise Refuse(f"Gemm {node_label(node)!r} has beta=0, so its bias C cannot absorb the shift")
        bias = constant_input(index, node, 2, "C")
        exact = float(read_attribute(node, "alpha", 1.0)) / beta * added
        if bias is not None:
            if bias.ndim > 2 or (bias.ndim >= 1 and bias.shape[-1] not in (1, added.size)):
                raise Refuse(f"Gemm bias C has shape {list(bias.shape)}, which does not broadcast to [M, N]")
            exact = bias.astype(np.float64) + exact  # broadcasts to [N] or [M, N]: C may be any of those
        _plan_bias(edit, node, index, exact, weight.dtype, bias)
        return None


class MatMul(Producer):
    """MatMul(X, W[K, N]): channels on the last axis of X (K, backward) and of Y (N, forward). MatMul stays MatMul
    (a Gemm would break inputs of rank > 2), so a shift becomes an Add inserted after it."""

    op_type, skip_name = "MatMul", "matmul"
    output_axis = -1
    self_describing = False  # its rank is its input's, which only tensor types say

    def output_rank(self, node, index):
        return index.rank(node.input[0])

    def input_rank(self, node, index):
        return index.rank(node.input[0])

    def input_dims(self, node, index):
        rank = index.rank(node.input[0]) or 2
        return [None] * (rank - 1) + [_matrix(index, node, 1, "weight").value.shape[0]]

    def output_channel_axis(self, rank):
        return rank - 1

    def input_channel_axis(self, rank):
        return rank - 1

    def output_channels(self, node, index):
        return _matrix(index, node, 1, "weight").value.shape[1]

    def input_channels(self, node, index):
        return _matrix(index, node, 1, "weight").value.shape[0]

    def forward(self, node, index, scale, shift, edit):
        weight = _matrix(index, node, 1, "weight")
        scale_weight(edit, weight, scale, 1)
        if not np.any(shift):
            return None
        return _bias_add(node, index, shift, weight.value.dtype, edit)

    def backward(self, node, index, scale, shift, edit):
        weight = _plain_matrix(index, node, 1, "weight")
        scaled, added = rows_affine(weight, scale, shift)
        set_exact(edit, node, 1, scaled, weight.dtype, tensor_hint(node, 1, "bnfold"))
        if not np.any(added) or _into_bias(node, index, added, edit):
            return None
        return _bias_add(node, index, added, weight.dtype, edit)


def _into_bias(node: onnx.NodeProto, index: GraphIndex, bias: np.ndarray, edit: Edit) -> bool:
    """Plan adding a [N] bias to the constant of the bias Add that alone reads `node` (a Linear exports as MatMul +
    Add), instead of a second Add; whether it could. Backward folds only: a forward fold may remove that Add."""
    reader = index.sole_consumer(node.output[0])
    if reader is None or reader.op_type != "Add" or reader.domain not in ("", "ai.onnx") or len(reader.input) != 2 \
            or list(reader.input).count(node.output[0]) != 1:
        return False
    position = 1 - list(reader.input).index(node.output[0])
    if not index.is_constant(reader.input[position]):
        return False
    value = index.constant(reader.input[position])
    if value.dtype.kind != "f" or value.ndim < 1 or value.shape[-1] != bias.size or value.size != bias.size:
        return False
    set_exact(edit, reader, position, value.astype(np.float64) + bias.reshape(value.shape), value.dtype,
              tensor_hint(reader, position, "bnfold"))
    return True


def _bias_add(node: onnx.NodeProto, index: GraphIndex, bias: np.ndarray, dtype, edit: Edit) -> onnx.NodeProto:
    """Plan an Add of a [N] bias right after `node`, taking over its readers."""
    output = node.output[0]
    if index.is_graph_output(output):
        raise Refuse(f"{node.op_type} {node_label(node)!r} output is a graph output, which would not see the bias "
                     "Add the shift needs")
    for user in index.users(output):
        if output not in user.input:
            raise Refuse(f"{node.op_type} {node_label(node)!r} output is read inside a subgraph of "
                         f"{node_label(user)!r}, which cannot be pointed at a bias Add")
    add = helper.make_node("Add", [output], [index.unique_name(f"{output}_bnfold_biased")],
                           name=index.unique_name(f"{node.name or output}_bnfold_bias"))
    edit.replace_uses(output, add.output[0])
    edit.insert_after(node, [add])
    set_exact(edit, add, 1, bias, dtype, tensor_hint(node, 1, "bias"))
    return add


PRODUCERS: Dict[str, Producer] = {entry.op_type: entry for entry in (Conv(), ConvTranspose(), Gemm(), MatMul())}
KERNEL_OPS = tuple(op for op, entry in PRODUCERS.items() if entry.kernel)
