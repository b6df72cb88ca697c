"""Tensor types (dims and dtypes) per scope: the main graph, each If/Loop/Scan body, each function body.

Rules need more than weights in places: MatMul's rank, a standalone BN's rank and dtype, a Reshape's dims. A name
is looked up only in the scope that defines it, so a branch or a function that reuses a main-graph name never
gets the main graph's type. Declared types (graph inputs, outputs, value_info; a function's value_info) are
checked against ONNX shape inference run from scratch; where the two disagree on rank or a known dim, the name is
marked conflicting and rules that need its type refuse. Function bodies get only what they declare: their types
differ per call site.

Inference runs on a skeleton of the model, with the data of large tensors left out: it needs only their dims and
dtype, and the weights are neither copied nor serialized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from .nodes import subgraphs

# Tensor element types numpy can hold.
NUMPY_ELEMENT_TYPES = set(helper.get_all_tensor_dtypes()) - {onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING}

# Tensors up to this size keep their data in the skeleton: shape inference reads small constants (Reshape targets).
SMALL_TENSOR_BYTES = 4096

Dims = List[Optional[int]]  # one entry per axis, None for a symbolic or unknown size
ScopeKey = Tuple  # () for the main graph; parent key + (node position, attribute name, graph position)


@dataclass
class ScopeTypes:
    dims: Dict[str, Dims] = field(default_factory=dict)
    dtypes: Dict[str, np.dtype] = field(default_factory=dict)
    conflicts: Dict[str, str] = field(default_factory=dict)  # name -> why its declared type is not trusted


def _value_types(values) -> Tuple[Dict[str, Dims], Dict[str, np.dtype]]:
    dims, dtypes = {}, {}
    for value in values:
        if not value.type.HasField("tensor_type"):
            continue
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type in NUMPY_ELEMENT_TYPES:
            dtypes[value.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if tensor_type.HasField("shape"):
            dims[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    return dims, dtypes


def _scopes(graph: onnx.GraphProto, key: ScopeKey = ()):
    """(key, graph) for `graph` and every subgraph below it."""
    yield key, graph
    for position, node in enumerate(graph.node):
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for index, body in enumerate(bodies):
                yield from _scopes(body, key + (position, attr.name, index))


def _disagree(declared: Dims, inferred: Dims) -> Optional[str]:
    if len(declared) != len(inferred):
        return f"rank {len(declared)} declared, {len(inferred)} inferred"
    for axis, (a, b) in enumerate(zip(declared, inferred)):
        if a is not None and b is not None and a != b:
            return f"dim {axis} is {a} declared, {b} inferred"
    return None


def scope_types(model: onnx.ModelProto, *, self_describing=None, typed_ops=()) -> Dict[ScopeKey, ScopeTypes]:
    """Types of every graph scope of the model (functions: see function_types). Shape inference runs unless
    every BN directly follows an op of `self_describing` (None: always run) and no op of `typed_ops` is present:
    the rules' tables say which ops need tensor types."""
    declared = {key: ScopeTypes(*_value_types([*g.input, *g.output, *g.value_info])) for key, g in
                _scopes(model.graph)}
    if self_describing is not None and not needs_inference(model, self_describing, typed_ops):
        return declared
    try:
        inferred_model = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    except Exception:  # inference is best effort: rules then use declared types, or refuse with "rank unknown"
        return declared
    for key, graph in _scopes(inferred_model.graph):
        if key not in declared:
            continue
        types = declared[key]
        dims, dtypes = _value_types([*graph.input, *graph.output, *graph.value_info])
        for name, inferred in dims.items():
            known = types.dims.get(name)
            if known is not None:
                why = _disagree(known, inferred)
                if why:
                    types.conflicts[name] = f"the model declares a type for {name!r} that shape inference " \
                                            f"contradicts ({why})"
                    continue
                # Keep what either side knows, axis by axis.
                types.dims[name] = [a if a is not None else b for a, b in zip(known, inferred)]
            else:
                types.dims[name] = inferred
        for name, dtype in dtypes.items():
            types.dtypes.setdefault(name, dtype)
    return declared


def function_types(function: onnx.FunctionProto) -> ScopeTypes:
    """What a function body declares (FunctionProto.value_info); nothing is inferred, types differ per call."""
    return ScopeTypes(*_value_types(function.value_info))


def needs_inference(model: onnx.ModelProto, self_describing, typed_ops) -> bool:
    """True unless every BN directly follows an op whose weights say everything and no op that needs types is
    present."""

    def nodes_need(nodes) -> bool:
        producers = {name: node.op_type for node in nodes for name in node.output}
        for node in nodes:
            if node.op_type in typed_ops:
                return True
            if node.op_type == "BatchNormalization" and node.input and \
                    producers.get(node.input[0]) not in self_describing:
                return True
            if any(nodes_need(sub.node) for sub in subgraphs(node)):
                return True
        return False

    return nodes_need(model.graph.node)


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model whose large tensors have dims and dtype but no data, and whose value_info and output
    shapes are dropped, so that inference starts from the inputs and weights alone."""
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
    for output in graph.output:
        stripped = copy.output.add(name=output.name)
        if output.type.HasField("tensor_type"):
            stripped.type.tensor_type.elem_type = output.type.tensor_type.elem_type
        else:
            stripped.type.CopyFrom(output.type)
    copy.initializer.extend(_strip_tensor(t) for t in graph.initializer)
    copy.node.extend(_strip_node(node) for node in graph.node)
    return copy
