"""Probe inputs for the local check: shapes a piece can run on, derived from what its nodes need.

A model's declared dims are hints, not facts: exporters write -1 for "unknown", 0 where a size is meant to be free,
symbolic names, or sizes that contradict the weights. So a dim is taken from the piece's own weights where a node
reading the input implies it (a Conv's input channels, a Gemm's or MatMul's features), from the declaration only
when it is a positive size, and is otherwise unknown: axis 0 gets the batch, the rest a size every kernel of the
piece fits with outputs to spare.
"""

from __future__ import annotations

from itertools import chain
from typing import Dict, List, Optional, Tuple

import numpy as np
from onnx import helper

from ..graph.pieces import Piece, PieceInput
from ..inputs import random_array
from ..rules.producers import KERNEL_OPS
from .metric import is_float

MIN_SPATIAL = 4
RETRY_SIZES = (16, 32)  # unknown dims tried when the first size is too small for the before side
SHAPE_COUPLED = ("Reshape", "Flatten")  # ops that may tie channels to the spatial size


def has_kernel(node) -> bool:
    """A node that slides a window: a producer whose table entry says so (rules.producers.KERNEL_OPS), or any
    node that declares a kernel_shape (pools, quantized convs)."""
    return node.op_type in KERNEL_OPS or any(attribute.name == "kernel_shape" for attribute in node.attribute)


Shape = Tuple[int, ...]
Dims = Tuple[Optional[int], ...]


def probe_dims(piece: Piece, free_spatial: bool = False) -> Dict[str, Dims]:
    """Each input's dims as far as the piece says: positive declared sizes, overridden by what a weight-reading
    node implies; None where unknown. free_spatial: in a piece with a Conv or pool, the spatial axes (2 on) of its
    inputs are unknown even where declared (any size the kernels fit computes the same map, and a small one costs
    less)."""
    result = {}
    convolved = any(has_kernel(node) for node in piece.before)
    for spec in piece.inputs:
        declared = [dim if isinstance(dim, (int, np.integer)) and dim > 0 else None for dim in spec.dims]
        implied = _implied_dims(spec.name, piece)
        if implied is not None:
            if len(implied) != len(declared):
                declared = [None] * len(implied)
            declared = [known if known is not None else dim for known, dim in zip(implied, declared)]
        if free_spatial and len(declared) >= 3 and convolved:
            declared = declared[:2] + [None] * (len(declared) - 2)
        result[spec.name] = tuple(declared)
    return result


def has_unknown(dims: Dict[str, Dims]) -> bool:
    return any(dim is None for spec_dims in dims.values() for dim in spec_dims)


def batch_is_free(dims: Dict[str, Dims]) -> bool:
    """Whether every input of rank >= 1 leaves axis 0 open, so a larger batch gives more samples per channel."""
    ranked = [spec_dims for spec_dims in dims.values() if spec_dims]
    return bool(ranked) and all(spec_dims[0] is None for spec_dims in ranked)


def probe_shapes(dims: Dict[str, Dims], size: int, batch: int = 1) -> Dict[str, Shape]:
    """Concrete shapes: unknown axis 0 gets `batch`, other unknown dims `size`."""
    return {
        name: tuple(dim if dim is not None else (batch if axis == 0 else size) for axis, dim in enumerate(spec_dims))
        for name, spec_dims in dims.items()
    }


def probe_feeds(inputs: List[PieceInput], shapes: Dict[str, Shape], rng: np.random.Generator,
                dtype: Optional[np.dtype] = None) -> Dict[str, np.ndarray]:
    """Seeded random data of each input's dtype (float inputs in `dtype` when given)."""
    feeds = {}
    for spec in inputs:
        kind = np.dtype(spec.dtype)
        if dtype is not None and is_float(kind):
            kind = np.dtype(dtype)
        feeds[spec.name] = np.asarray(random_array(kind, shapes[spec.name], rng))
    return feeds


def spatial_size(piece: Piece) -> int:
    """A size for unknown non-batch dims that every kernel in the piece fits with 4 outputs per axis (16 values per
    channel in 2-D): over the piece's Conv/ConvTranspose/pooling nodes, the widest dilated kernel plus three
    strides, less the padding a Conv or pool adds. Small on purpose: the check's cost is weights x positions."""
    constants = {**piece.constants_before, **piece.constants_after}
    widest = 0
    for node in chain(piece.before, piece.after):
        if not has_kernel(node):
            continue
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        kernel = list(attributes.get("kernel_shape", []))
        weight_index = 3 if node.op_type == "QLinearConv" else 1
        if not kernel and "Pool" not in node.op_type and len(node.input) > weight_index:
            weight = constants.get(node.input[weight_index])
            kernel = list(np.shape(weight)[2:]) if weight is not None else []
        dilations = list(attributes.get("dilations", [])) or [1] * len(kernel)
        strides = list(attributes.get("strides", [])) or [1] * len(kernel)
        pads = list(attributes.get("pads", [])) or [0] * (2 * len(kernel))
        padded = node.op_type != "ConvTranspose" and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        for axis, (k, d, s) in enumerate(zip(kernel, dilations, strides)):
            padding = int(pads[axis]) + int(pads[axis + len(kernel)]) if padded and len(pads) == 2 * len(kernel) else 0
            widest = max(widest, (int(k) - 1) * int(d) + 1 + 3 * int(s) - padding)
    return max(MIN_SPATIAL, widest)


def sizes_to_try(piece: Piece) -> List[int]:
    first = spatial_size(piece)
    return [first] + [size for size in RETRY_SIZES if size > first]


def probe_attempts(piece: Piece) -> List[Tuple[Dict[str, Dims], int]]:
    """(dims, size for unknown dims) to try in turn: a Conv's spatial axes free at small sizes first, whatever the
    model declares; the declared sizes after, for a piece that needs them. A piece with a Reshape or Flatten,
    whose channels may depend on the spatial size, tries the declared sizes first."""
    attempts: List[Tuple[Dict[str, Dims], int]] = []
    coupled = any(node.op_type in SHAPE_COUPLED for node in chain(piece.before, piece.after))
    for free in ((False, True) if coupled else (True, False)):
        dims = probe_dims(piece, free_spatial=free)
        for size in sizes_to_try(piece) if has_unknown(dims) else [0]:
            if (dims, size) not in attempts:
                attempts.append((dims, size))
    return attempts


def _implied_dims(name: str, piece: Piece) -> Optional[List[Optional[int]]]:
    """Dims of input `name` that a Conv / ConvTranspose / Gemm / MatMul (from its weight) or a BatchNormalization
    (from its scale) of the before side reading it as its data input implies (None where it does not say)."""
    for node in piece.before:
        if not node.input or node.input[0] != name or len(node.input) < 2:
            continue
        weight = piece.constants_before.get(node.input[1])
        if weight is None:
            continue
        weight = np.asarray(weight)
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        group = int(attributes.get("group", 1))
        if node.op_type == "Conv" and weight.ndim >= 3:
            return [None, weight.shape[1] * group] + [None] * (weight.ndim - 2)
        if node.op_type == "ConvTranspose" and weight.ndim >= 3:
            return [None, weight.shape[0]] + [None] * (weight.ndim - 2)
        if node.op_type == "Gemm" and weight.ndim == 2:
            k = weight.shape[1] if attributes.get("transB", 0) else weight.shape[0]
            return [k, None] if attributes.get("transA", 0) else [None, k]
        if node.op_type == "MatMul" and weight.ndim == 2:
            spec = next(spec for spec in piece.inputs if spec.name == name)
            rank = max(len(spec.dims), 2)
            return [None] * (rank - 1) + [weight.shape[0]]
        if node.op_type == "BatchNormalization" and weight.ndim == 1:  # one scale per channel, on axis 1
            spec = next(spec for spec in piece.inputs if spec.name == name)
            return [None, weight.shape[0]] + [None] * (max(len(spec.dims), 2) - 2)
    return None
