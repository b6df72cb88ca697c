"""What the model's own float32 (or float16) arithmetic changes: the noise a correct fold is judged against.

Two facts about the model set the noise, beyond the dtype of the tensor compared:

- the precision that flows into a tensor: a float32 output computed in float16 (onnxconverter's keep_io_types)
  carries float16 rounding, so it is judged at the float16 tolerance (`flowing_dtypes`);
- how much the model amplifies rounding: BN scales of 20 after depthwise convs, softmax inputs of 1e5. The
  original model evaluated exactly (in float64, by onnx's reference evaluator: `exact_values`) says how far the
  original's own run already is from the truth, per tensor and per channel; a correct fold is about as far from
  the truth, so the fold may differ from the original by NOISE_MULTIPLE times that distance (checking.compare
  takes it as `exact`). It is computed only for tensors that fail the dtype rule, so a model that passes pays
  nothing for it.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .tolerance import is_float, machine_epsilon

_LOW_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def exact_values(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], names: Sequence[str]
                 ) -> Optional[Dict[str, np.ndarray]]:
    """`names` of the model evaluated in float64 on `feeds` (float inputs widened), computing only the nodes they
    need; None when onnx's reference evaluator cannot run it (an op it lacks, a custom domain)."""
    from onnx.reference import ReferenceEvaluator

    try:
        wide = _in_float64(_needed_for(model, names))
        evaluator = ReferenceEvaluator(wide)
        inputs = {name: (np.asarray(value, np.float64) if np.asarray(value).dtype.kind == "f" else value)
                  for name, value in feeds.items() if name in set(evaluator.input_names)}
        with np.errstate(all="ignore"):  # the model's own NaN/inf are compared, not warned about
            return dict(zip(names, evaluator.run(list(names), inputs)))
    except Exception:  # the evaluator raises many types for what it cannot run: no floor, the verdict stands
        return None


def _needed_for(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of the model with only the main-graph nodes `names` depend on, and `names` as its outputs."""
    producer = {output: node for node in model.graph.node for output in node.output if output}
    pending, kept, read = list(names), set(), set()
    while pending:
        name = pending.pop()
        node = producer.get(name)
        if node is None or id(node) in kept:
            continue
        kept.add(id(node))
        inputs = [*node.input, *_outer_names(node)]
        read.update(inputs)
        pending.extend(inputs)
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    graph = copy.graph
    graph.node.extend(node for node in model.graph.node if id(node) in kept)
    graph.initializer.extend(_readable(tensor) for tensor in model.graph.initializer if tensor.name in read)
    graph.input.extend(model.graph.input)
    graph.output.extend(helper.make_value_info(name, onnx.TypeProto()) for name in names)
    return copy


def _readable(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The tensor with its values in it (a weight held in the source file is read: see bnfold.tensor_store)."""
    from ..tensor_store import in_proto

    return in_proto(tensor)


def _outer_names(node: onnx.NodeProto):
    """Names a node's subgraphs read from the enclosing scope (a superset: every input of every inner node)."""
    for attribute in node.attribute:
        for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            for inner in graph.node:
                yield from inner.input
                yield from _outer_names(inner)


def _in_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every float32/float16/bfloat16 tensor, constant and Cast target made float64 (in place)."""
    _widen_graph(model.graph)
    return model


def _widen_graph(graph: onnx.GraphProto) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type in _LOW_FLOATS:
            value.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for tensor in graph.initializer:
        _widen_tensor(tensor)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attribute.t)
            elif node.op_type == "Cast" and attribute.name == "to" and attribute.i in _LOW_FLOATS:
                attribute.i = onnx.TensorProto.DOUBLE
            for body in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _widen_graph(body)


def _widen_tensor(tensor: onnx.TensorProto) -> None:
    if tensor.data_type in _LOW_FLOATS:
        from ..tensor_store import value

        tensor.CopyFrom(numpy_helper.from_array(np.asarray(value(tensor), np.float64), tensor.name))


def _float_dtype(elem_type: int):
    if not elem_type:
        return None
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dtype if is_float(dtype) and not np.issubdtype(dtype, np.complexfloating) else None


def flowing_dtypes(model: onnx.ModelProto, elem_types: Mapping[str, int]) -> Dict[str, np.dtype]:
    """Per main-graph tensor computed from data, the least precise float dtype among it and the tensors computed
    on the way to it. Graph inputs and constants do not count: their values are exact as given (a float16 input
    or weight cast up is exact in float32); what rounds is arithmetic done in the narrower type."""
    from .intermediates import constant_names

    graph = model.graph
    constants = constant_names(graph)
    worst: Dict[str, np.dtype] = {}
    for _ in range(2):  # a second pass settles a graph whose nodes are out of order
        for node in graph.node:
            upstream = [worst[name] for name in node.input if name in worst]
            for output in node.output:
                own = _float_dtype(elem_types.get(output, 0))
                candidates = upstream + ([own] if own is not None else [])
                if output and candidates and output not in constants:
                    worst[output] = max(candidates, key=machine_epsilon)
    return worst
