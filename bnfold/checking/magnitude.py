"""The float64 local check's magnitude model: how far a correct fold's rounding can move the after side's outputs.

A correct fold stores the exact folded constants rounded to their dtype: each off by at most u times itself. On
independent standard-normal probes x, a reduction sum_i x_i w_i whose weights are each off by d_i (|d_i| <= u |w_i|)
is off by a normal variable of standard deviation sqrt(sum_i d_i^2) <= u sqrt(sum_i w_i^2), whatever the d_i are.
The magnitude model is the after side run on squared constants with every probe replaced by its mean square 1
(Sub as Add, Neg as Identity, alpha/beta squared): its square root B is that standard deviation, carried through
views, sums (root-sum-square), products by constants and means (an RMS bounds a mean). It is valid while every
reduction (Conv, ConvTranspose, Gemm, MatMul) reads independent probes: views of them, zero Pads, Concats of them,
and GlobalAveragePools (means of disjoint probes, whose variance the model divides by their count). Constant-only
nodes (a DequantizeLinear of an int8 weight) are evaluated first and enter squared. Anything else leaves the piece
to ONNX Runtime.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph.pieces import Piece
from .. import tensor_store
from . import reference_ops
from .metric import is_float, unit_roundoff

MIN_OPSET = 7  # numpy broadcasting for elementwise ops from here on; older pieces run in ONNX Runtime
_FLOAT32_SAFE = 1e15  # constants whose squares stay well inside float32 are squared in float32
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}

# Ops of the after side and how the magnitude model treats them: the same op on squares of everything float.
_VIEWS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Pad", "Concat", "Split",
          "DepthToSpace", "SpaceToDepth", "Cast", "Dropout"}
_REDUCTIONS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}  # terms of distinct inputs: their data must be probes
_ELEMENTWISE = {"Add", "Sum", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "Expand", "Tile", "Gather"}
# RMS >= mean; a max's error is one element's, at most the largest bound of its window
_MEANS = {"AveragePool", "GlobalAveragePool", "ReduceMean", "MaxPool", "GlobalMaxPool", "ReduceMax"}
_BOUND_OPS = _VIEWS | _REDUCTIONS | _ELEMENTWISE | _MEANS
# Ops whose meaning a float64 copy would change, or onnx.reference does not have: ONNX Runtime judges them.
_NOT_HERE = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
             "ConvInteger", "MatMulInteger", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike",
             "RandomUniformLike", "Multinomial", "Bernoulli"}


def unsupported(piece: Piece, opsets: Dict[str, int]) -> str:
    """Why the float64 path cannot evaluate or bound this piece, or "" when it can."""
    if opsets.get("", opsets.get("ai.onnx", 0)) < MIN_OPSET:
        return f"opset below {MIN_OPSET}"
    for nodes, constants in ((piece.before, piece.constants_before), (piece.after, piece.constants_after)):
        folded = constant_nodes(nodes, constants)
        for node in nodes:
            if node.domain not in ("", "ai.onnx"):
                return f"{node.op_type} is in domain {node.domain}"
            if node.op_type in _NOT_HERE and not (node.op_type == "DequantizeLinear" and id(node) in folded):
                return f"{node.op_type} has no float64 meaning here"
            if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
                return f"{node.op_type} has a subgraph"
        for array in constants.values():
            dtype = np.asarray(array).dtype
            if not (is_float(dtype) or np.issubdtype(dtype, np.integer) or dtype == np.bool_):
                return f"a constant of dtype {dtype}"
    folded = constant_nodes(piece.after, piece.constants_after)
    constants = set(piece.constants_after) | {name for node in piece.after if id(node) in folded
                                              for name in node.output}
    fresh = {spec.name for spec in piece.inputs}
    for node in piece.after:
        op = node.op_type
        if id(node) in folded:
            continue
        if op in ("Shape", "Size"):
            constants.update(node.output)
            continue
        if op not in _BOUND_OPS:
            return f"{op} is outside the ops whose rounding the float64 path bounds"
        runtime = [name for name in node.input if name and name not in constants]
        if op in _REDUCTIONS and not all(name in fresh for name in runtime[:1]) or len(runtime) > 1 and op in (
                "Mul", "Div", *_REDUCTIONS):
            return f"{op} reads a tensor the piece computes"
        if op == "Div" and (len(node.input) < 2 or node.input[1] not in constants):
            return "Div by a run-time tensor"
        if op == "Cast" and _attribute(node, "to") not in FLOAT_TYPES:
            return "a Cast to a non-float type"
        if _keeps_probes(node, fresh, piece.constants_after):
            fresh.update(name for name in node.output if name)
    return ""


def constant_nodes(nodes: List[onnx.NodeProto], constants: Dict[str, np.ndarray]) -> set:
    """ids of the nodes that compute from constants only (a DequantizeLinear of a stored int8 weight, a Constant):
    the magnitude model takes their float64 results as constants."""
    known, result = set(constants), set()
    for node in nodes:
        if node.op_type not in ("Shape", "Size") and all(not name or name in known for name in node.input):
            result.add(id(node))
            known.update(name for name in node.output if name)
    return result


def fresh_means(piece: Piece) -> set:
    """Outputs of the after side's GlobalAveragePools of independent probes: still independent normals, of variance
    1 / (pooled values); the magnitude model divides by that count."""
    fresh, means = {spec.name for spec in piece.inputs}, set()
    for node in piece.after:
        if node.op_type == "GlobalAveragePool" and node.input[0] in fresh:
            means.add(node.output[0])
        if _keeps_probes(node, fresh, piece.constants_after):
            fresh.update(name for name in node.output if name)
    return means


def _keeps_probes(node: onnx.NodeProto, fresh: set, constants: Dict[str, np.ndarray]) -> bool:
    """Whether a node's outputs are still independent normal probes (each value once, no constants among them): a
    view of probes, a Concat of only such views, a Pad adding only zeros, a GlobalAveragePool (disjoint means)."""
    if node.op_type not in _VIEWS and node.op_type != "GlobalAveragePool":
        return False
    if node.op_type == "Concat":
        return all(name in fresh for name in node.input)
    if node.input[0] not in fresh:
        return False
    if node.op_type == "Pad":
        value = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        zero = _attribute(node, "value", 0.0) == 0 and (value is None or not np.any(value))
        return zero and _attribute(node, "mode", b"constant") in (b"constant", "constant")
    return True


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def squared(array, take=None) -> np.ndarray:
    """The square of a float constant, in float32 where that holds it (the magnitude model needs no more precision
    than a bound does), else float64; other constants as they are. take(shape, dtype): where to put it."""
    array = np.asarray(array)
    if not is_float(array.dtype):
        return array
    small = array.dtype.itemsize < 8 and (not array.size or max(abs(float(array.max())), abs(float(array.min())))
                                          < _FLOAT32_SAFE)
    dtype = np.dtype(np.float32 if small else np.float64)
    out = take(array.shape, dtype) if take is not None else np.empty(array.shape, dtype)
    np.square(array, out=out, dtype=dtype)
    return out


def to_squares(node: onnx.NodeProto, means: set = frozenset()) -> None:
    """The magnitude model's version of an after-side node, on squared inputs and constants (`means`: outputs of
    GlobalAveragePools of independent probes, whose variance is the mean's over the count)."""
    if node.op_type == "GlobalAveragePool" and node.output[0][2:] in means:
        node.op_type, node.domain = "GlobalAveragePoolOfIndependent", reference_ops.DOMAIN
    elif node.op_type == "Sub":
        node.op_type = "Add"
    elif node.op_type in ("Neg", "Abs"):
        node.op_type = "Identity"
    for attr in node.attribute:
        if node.op_type == "Gemm" and attr.name in ("alpha", "beta") or node.op_type == "Pad" and attr.name == "value":
            attr.f = attr.f * attr.f
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.DOUBLE:
            value = tensor_store.value(attr.t)
            attr.t.CopyFrom(numpy_helper.from_array(value * value, attr.t.name))


def roundoff(piece: Piece) -> float:
    """The unit roundoff of the coarsest float dtype the after side stores constants in."""
    dtypes = [np.asarray(array).dtype for array in piece.constants_after.values()]
    for node in piece.after:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in FLOAT_TYPES:
                dtypes.append(np.dtype(helper.tensor_dtype_to_np_dtype(attr.t.data_type)))
    return max((unit_roundoff(dtype) for dtype in dtypes), default=0.0)
