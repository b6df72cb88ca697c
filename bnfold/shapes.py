"""Declared and inferred tensor types (dims and dtypes) for the rules that need more than weights: MatMul's rank,
a standalone BN's rank and dtype, a Reshape's dims.

ONNX shape inference runs on a skeleton of the model, with the data of large tensors left out: inference needs
only their dims and dtype, and the model's weights are neither copied nor serialized (onnx.shape_inference would
otherwise hold several copies of them at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper

from .graph import NUMPY_ELEMENT_TYPES, subgraphs

# Tensors up to this size keep their data in the skeleton: shape inference reads small constants (Reshape targets).
SMALL_TENSOR_BYTES = 4096

# BNs fed by these get everything they need from weights; anything else may need tensor types.
SELF_DESCRIBING_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


Dims = List[Optional[int]]  # one entry per axis, None for a symbolic or unknown size


@dataclass
class TensorTypes:
    dims: Dict[str, Dims] = field(default_factory=dict)
    dtypes: Dict[str, np.dtype] = field(default_factory=dict)

    def collect(self, graph: onnx.GraphProto) -> "TensorTypes":
        """Add what `graph` and its subgraphs declare for inputs, outputs and value_info."""
        for value in (*graph.input, *graph.output, *graph.value_info):
            if not value.type.HasField("tensor_type"):
                continue
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type in NUMPY_ELEMENT_TYPES:
                self.dtypes[value.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
            if tensor_type.HasField("shape"):
                self.dims[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                         for d in tensor_type.shape.dim]
        for node in graph.node:
            for sub in subgraphs(node):
                self.collect(sub)
        return self


def needs_inference(model: onnx.ModelProto) -> bool:
    """True when some BN is not fed by a producer whose weights say everything, or a MatMul may absorb one."""

    def nodes_need(nodes) -> bool:
        producers = {name: node.op_type for node in nodes for name in node.output}
        for node in nodes:
            if node.op_type == "MatMul":
                return True
            if node.op_type == "BatchNormalization" and node.input and \
                    producers.get(node.input[0]) not in SELF_DESCRIBING_PRODUCERS:
                return True
            if any(nodes_need(sub.node) for sub in subgraphs(node)):
                return True
        return False

    return nodes_need(model.graph.node) or any(nodes_need(function.node) for function in model.functions)


def tensor_types(model: onnx.ModelProto) -> TensorTypes:
    """What the model declares, plus what ONNX shape inference adds when some rule may need it."""
    types = TensorTypes().collect(model.graph)
    if not needs_inference(model):
        return types
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    except Exception:  # inference is best effort: rules refuse with "rank unknown" rather than guess
        return types
    return types.collect(inferred.graph)


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model whose large tensors have dims and dtype but no data."""
    copy = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(copy, name, getattr(model, name))
    copy.opset_import.extend(model.opset_import)
    for function in model.functions:
        stripped = copy.functions.add()
        stripped.CopyFrom(function)
        del stripped.node[:]
        stripped.node.extend(_strip_node(node) for node in function.node)
    copy.graph.CopyFrom(_strip_graph(model.graph))
    return copy


def _strip_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_type not in NUMPY_ELEMENT_TYPES:
        return tensor
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    if int(np.prod(tensor.dims, dtype=np.int64)) * itemsize <= SMALL_TENSOR_BYTES:
        return tensor
    stripped = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type)
    stripped.dims.extend(tensor.dims)
    return stripped


def _strip_node(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto(op_type=node.op_type, domain=node.domain, name=node.name)
    copy.input.extend(node.input)
    copy.output.extend(node.output)
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            stripped = copy.attribute.add(name=attr.name, type=attr.type)
            stripped.t.CopyFrom(_strip_tensor(attr.t))
        elif attr.type == onnx.AttributeProto.GRAPH:
            stripped = copy.attribute.add(name=attr.name, type=attr.type)
            stripped.g.CopyFrom(_strip_graph(attr.g))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            stripped = copy.attribute.add(name=attr.name, type=attr.type)
            stripped.graphs.extend(_strip_graph(g) for g in attr.graphs)
        else:
            copy.attribute.append(attr)
    return copy


def _strip_graph(graph: onnx.GraphProto) -> onnx.GraphProto:
    copy = onnx.GraphProto(name=graph.name)
    copy.input.extend(graph.input)
    copy.output.extend(graph.output)
    copy.value_info.extend(graph.value_info)
    copy.initializer.extend(_strip_tensor(t) for t in graph.initializer)
    copy.node.extend(_strip_node(node) for node in graph.node)
    return copy
