"""Which intermediate tensors two models share by name *and* meaning, so both can expose them for comparison.

A fold rewrites a small region (producer [-> chain] -> BN, or BN -> consumer); tensors inside it keep their names
but legitimately change value (a Conv's output now carries the BN's result). Everything else must keep its value.
A tensor of the reference's main graph is compared when it also exists in the candidate's main graph and
- its producer is unchanged (same op, attributes, inputs, outputs and constant input values in both models), or
- a node that reads it is unchanged (that node would see a different value otherwise), or
- it is the output of a BatchNormalization in the reference (a fold claims its result is kept),
and it is a float tensor computed from data (not an initializer, graph input, Constant or a function of those).
The fold boundaries are the compared tensors a fold produces anew: a BatchNormalization's output, or a tensor
whose producer changed while one of its readers did not. Every wrong fold shows first at a boundary; the tensors
between boundaries are computed by unchanged nodes from them, so the check compares boundaries and outputs and
sweeps the rest only to localize a failure. Pure onnx: no onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set

import numpy as np
import onnx
from onnx import helper

from ..tensor_store import same_value

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


@dataclass
class SharedTensors:
    """names: compared intermediates in the reference's graph order, with their ONNX element type.
    boundaries: the names (of `names`) at a fold's edge (see the module docstring).
    order: position of every main-graph tensor of the reference (outputs included), for "first in graph order".
    producers: reference tensor -> (op_type, node name, its data inputs), to trace a divergence to a BN."""

    names: Dict[str, int]
    boundaries: Set[str]
    order: Dict[str, int]
    producers: Dict[str, tuple]


def shared_tensors(reference: onnx.ModelProto, candidate: onnx.ModelProto, rewritten: Iterable[str] = (),
                   elem_types: Optional[Mapping[str, int]] = None) -> SharedTensors:
    """`rewritten`: names a fold kept but gave new values (a producer that absorbed a BN, the views after it)."""
    ref_graph, cand_graph = reference.graph, candidate.graph
    ref_constants, cand_constants = constant_names(ref_graph), constant_names(cand_graph)
    cand_producer = {output: node for node in cand_graph.node for output in node.output if output}
    ref_init = {t.name: t for t in ref_graph.initializer}
    cand_init = {t.name: t for t in cand_graph.initializer}
    excluded = {v.name for v in ref_graph.input} | {v.name for v in ref_graph.output} | ref_constants
    excluded |= set(rewritten)

    unchanged_cache: Dict[int, bool] = {}

    def unchanged(node: onnx.NodeProto) -> bool:
        key = id(node)
        if key not in unchanged_cache:
            other = cand_producer.get(node.output[0]) if node.output and node.output[0] else None
            unchanged_cache[key] = other is not None and _same_node(node, other, ref_init, cand_init,
                                                                    ref_constants, cand_constants)
        return unchanged_cache[key]

    readers: Dict[str, List[onnx.NodeProto]] = {}
    for node in ref_graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    elem_types = element_types(reference) if elem_types is None else elem_types
    names, order, producers, boundaries = {}, {}, {}, set()
    for node in ref_graph.node:
        data_inputs = tuple(name for name in node.input if name and name not in ref_constants)
        for output in node.output:
            if not output:
                continue
            order.setdefault(output, len(order))
            producers[output] = (node.op_type, node.name, data_inputs)
            if output in excluded or output not in cand_producer or elem_types.get(output) not in _FLOAT_TYPES:
                continue
            if node.op_type == "BatchNormalization" or unchanged(node):
                names[output] = elem_types[output]
                if node.op_type == "BatchNormalization" and not unchanged(node):
                    boundaries.add(output)
            elif any(unchanged(reader) for reader in readers.get(output, ())):
                names[output] = elem_types[output]
                boundaries.add(output)
    return SharedTensors(names, boundaries, order, producers)


def constant_names(graph: onnx.GraphProto) -> Set[str]:
    """Initializers, Constant outputs, and outputs of nodes whose every input is one of those."""
    constants = {t.name for t in graph.initializer}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(name in constants for name in inputs)):
            constants.update(name for name in node.output if name)
    return constants


def _same_node(a: onnx.NodeProto, b: onnx.NodeProto, a_init, b_init, a_constants, b_constants) -> bool:
    if (a.op_type, a.domain, list(a.input), list(a.output)) != (b.op_type, b.domain, list(b.input), list(b.output)):
        return False
    if [attr.SerializeToString() for attr in a.attribute] != [attr.SerializeToString() for attr in b.attribute]:
        return False
    for name in a.input:
        if name in a_init or name in b_init:
            if name not in a_init or name not in b_init or not same_value(a_init[name], b_init[name]):
                return False
        elif (name in a_constants) != (name in b_constants):
            return False
    return True


def element_types(model: onnx.ModelProto) -> Dict[str, int]:
    """ONNX element type of every main-graph tensor: declared, else from shape inference on a weightless copy."""
    types = {}
    inferred = _inferred(model) or model.graph
    for value in (*inferred.value_info, *inferred.output, *model.graph.value_info, *model.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _inferred(model: onnx.ModelProto, input_shapes: Optional[Mapping[str, Sequence[int]]] = None
              ) -> Optional[onnx.GraphProto]:
    """The main graph of a weightless copy after shape inference (graph inputs fixed to `input_shapes`), or None
    when inference fails (best effort: callers fall back to what the model declares)."""
    from ..graph.order import sort_nodes
    from ..graph.types import skeleton

    try:
        copy = skeleton(model)
        for value in copy.graph.input:
            if input_shapes and value.name in input_shapes and value.type.HasField("tensor_type"):
                shape = value.type.tensor_type.shape
                shape.ClearField("dim")
                for size in input_shapes[value.name]:
                    shape.dim.add().dim_value = int(size)
        sort_nodes(copy)  # inference reads nodes in order: one out of order would leave the rest untyped
        return onnx.shape_inference.infer_shapes(copy, strict_mode=False).graph
    except Exception:
        return None


def tensor_sizes(model: onnx.ModelProto, names: Sequence[str], input_shapes: Mapping[str, Sequence[int]]
                 ) -> Dict[str, int]:
    """Bytes of each of `names` at `input_shapes` (shape inference on a weightless copy); a tensor of unknown size
    counts as the largest known one."""
    inferred = _inferred(model, input_shapes)
    sizes: Dict[str, int] = {}
    for value in (inferred.value_info if inferred is not None else ()):
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        if tensor_type.elem_type and tensor_type.HasField("shape") and all(d >= 0 for d in dims):
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).itemsize
            sizes[value.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    unknown = max(sizes.values(), default=0)
    return {name: sizes.get(name, unknown) for name in names}


def chunks_by_bytes(names: Sequence[str], sizes: Mapping[str, int], budget: int) -> List[List[str]]:
    """`names` in order, cut into runs whose sizes add up to at most `budget` bytes each (a larger tensor stands
    alone)."""
    chunks: List[List[str]] = []
    total = 0
    for name in names:
        if not chunks or (total + sizes[name] > budget and chunks[-1]):
            chunks.append([])
            total = 0
        chunks[-1].append(name)
        total += sizes[name]
    return chunks


def spread_within(names: Sequence[str], sizes: Mapping[str, int], budget: int) -> List[str]:
    """The most of `names` that fit in `budget` bytes, spread evenly over their order and always with the last
    (nearest the outputs): every `step`-th one, for the smallest step that fits."""
    for step in range(1, len(names) + 1):
        picked = list(names[::-1][::step])[::-1]
        if sum(sizes[name] for name in picked) <= budget:
            return picked
    return []


def with_outputs(model: onnx.ModelProto, names: Mapping[str, int]) -> List[onnx.ValueInfoProto]:
    """Append `names` as extra graph outputs of `model` (in place); return them, for remove_outputs."""
    present = {value.name for value in model.graph.output}
    added = [helper.make_tensor_value_info(name, elem_type, None)
             for name, elem_type in names.items() if name not in present]
    model.graph.output.extend(added)
    return added


def remove_outputs(model: onnx.ModelProto, added: List[onnx.ValueInfoProto]) -> None:
    """Undo with_outputs."""
    if added:
        del model.graph.output[len(model.graph.output) - len(added):]


def divergence_source(name: str, shared: SharedTensors, labels: Optional[Mapping[str, str]]) -> Optional[str]:
    """The BN fold behind a diverging tensor: the tensor's own label, else the nearest labelled tensor or
    BatchNormalization walking up the reference from it (a Relu after a BN can fail first: its channels' peaks,
    and so its tolerances, are smaller than the BN output's)."""
    labels = labels or {}
    seen, frontier = set(), [name]
    while frontier:
        tensor = frontier.pop(0)
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in labels:
            return labels[tensor]
        op_type, node_name, inputs = shared.producers.get(tensor, (None, None, ()))
        if op_type == "BatchNormalization":
            return f"{node_name or '(unnamed)'} -> {tensor!r}"
        frontier.extend(inputs)
    return None
