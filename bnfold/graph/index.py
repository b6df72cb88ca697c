"""An index over one graph scope (the main graph, an If/Loop/Scan body, or a function body): who produces and who
reads each tensor, what that scope knows of a tensor's type, and unique names for new tensors.

Every lookup is scoped: a name is resolved in the scope that defines it, so a function body or a branch that reuses
a main-graph name never sees the main graph's type or value. A name the scope does not define is an outer-scope
read and is looked up in the parent scope (a function body has none: its free names are its inputs).
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Set

import numpy as np
import onnx
from onnx import helper

from ..errors import InvalidModelError
from .constants import ConstantBudget, ConstantEvaluator
from .editor import Editor
from .nodes import DEFAULT_DOMAINS, NotConstant, is_op, node_label, subgraphs
from .types import NUMPY_ELEMENT_TYPES, ScopeTypes

def outer_scope_uses(graph: onnx.GraphProto) -> Set[str]:
    """Names a (sub)graph reads without defining them: its implicit inputs from enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: Set[str] = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for sub in subgraphs(node):
            used |= outer_scope_uses(sub)
        defined.update(node.output)
    used.update(v.name for v in graph.output)
    return used - defined


def all_names(model: onnx.ModelProto) -> Set[str]:
    """Every tensor and node name in the model, subgraphs and functions included, for unique-name generation."""
    names: Set[str] = set()
    pending: List[Iterable[onnx.NodeProto]] = []

    def add_graph(graph: onnx.GraphProto) -> None:
        names.update(v.name for v in graph.input)
        names.update(v.name for v in graph.output)
        names.update(t.name for t in graph.initializer)
        pending.append(graph.node)

    add_graph(model.graph)
    for function in model.functions:
        names.update(function.input)
        names.update(function.output)
        pending.append(function.node)
    while pending:
        for node in pending.pop():
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
            for sub in subgraphs(node):
                add_graph(sub)
    names.discard("")
    return names


@lru_cache(maxsize=None)
def _schema(op_type: str, opset: int):
    try:
        return onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


def validate_node(node: onnx.NodeProto, opset: int) -> None:
    """Raise InvalidModelError when a node lacks a required input or output, or has an attribute of the wrong
    type: onnx.checker catches these, but users may skip it (--no-check) and rules index freely."""
    schema = _schema(node.op_type, opset)
    if schema is None:
        return
    label = f"{node.op_type} node {node_label(node)!r}"
    if len(node.input) < schema.min_input or not all(node.input[:schema.min_input]):
        raise InvalidModelError(f"{label} has {len(node.input)} inputs; it needs at least {schema.min_input}")
    if len(node.output) < max(schema.min_output, 1) or not node.output[0]:
        raise InvalidModelError(f"{label} has no output")
    for attr in node.attribute:
        declared = schema.attributes.get(attr.name)
        if declared is not None and not attr.ref_attr_name and attr.type != declared.type:
            raise InvalidModelError(
                f"{label}: attribute {attr.name!r} is {onnx.AttributeProto.AttributeType.Name(attr.type)}, "
                f"expected {onnx.AttributeProto.AttributeType.Name(declared.type)}")


class GraphIndex:
    """Producers, consumers, constants and types of one scope; `parent` is the enclosing scope's index."""

    def __init__(self, graph: onnx.GraphProto, *, model, path: str = "main",
                 parent: Optional["GraphIndex"] = None, types: Optional[ScopeTypes] = None,
                 function: bool = False, validated_ops=frozenset()):
        self.graph = graph
        self.model = model  # the ModelScope: ir_version, opset, names, options, constant budget
        self.path = path
        self.parent = parent
        self.types = types if types is not None else ScopeTypes()
        # A function body has no initializers: new constants become Constant nodes at the top of the body.
        self.function = function
        self.initializers: Dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.input_names = {v.name for v in graph.input}
        self.output_names = {v.name for v in graph.output}
        self.producers: Dict[str, onnx.NodeProto] = {}
        self.consumers: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
        # Wrappers of protobuf messages are created on access: hold one per node so identities stay stable.
        self.nodes: List[onnx.NodeProto] = list(graph.node)
        self.position: Dict[int, int] = {}
        for position, node in enumerate(self.nodes):
            self.position[id(node)] = position
            if node.op_type in validated_ops and node.domain in DEFAULT_DOMAINS:
                validate_node(node, model.opset)
            for name in node.output:
                if name:
                    self.producers[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
            for sub in subgraphs(node):
                for name in outer_scope_uses(sub):
                    self.consumers[name].append(node)
        self.removed: Set[int] = set()
        self.constants = ConstantEvaluator(self)
        self.editor = Editor(self)

    # --- structure -----------------------------------------------------------------------------------------

    def defines(self, name: str) -> bool:
        return name in self.producers or name in self.initializers or name in self.input_names

    def is_graph_output(self, name: str) -> bool:
        return name in self.output_names

    def is_removed(self, node: onnx.NodeProto) -> bool:
        return id(node) in self.removed

    def users(self, name: str) -> List[onnx.NodeProto]:
        """Live consumers of a tensor in this scope (a node using it twice appears twice)."""
        return [node for node in self.consumers.get(name, ()) if id(node) not in self.removed]

    def value_readers(self, name: str) -> List[onnx.NodeProto]:
        """Live consumers that read the tensor's values: a Shape node reads only its shape, which folds keep."""
        return [node for node in self.users(name)
                if not (is_op(node, ("Shape",)) and list(node.input) == [name])]

    def sole_consumer(self, name: str) -> Optional[onnx.NodeProto]:
        users = self.value_readers(name)
        return users[0] if len(users) == 1 and not self.is_graph_output(name) else None

    def producer(self, name: str) -> Optional[onnx.NodeProto]:
        node = self.producers.get(name)
        return None if node is None or id(node) in self.removed else node

    # --- types, in this scope ------------------------------------------------------------------------------

    def _owner(self, name: str) -> Optional["GraphIndex"]:
        """The scope that defines `name`: this one, or the nearest enclosing one."""
        index: Optional[GraphIndex] = self
        while index is not None and not index.defines(name):
            index = index.parent
        return index

    def type_conflict(self, name: str) -> Optional[str]:
        """Why the model's declared type of `name` cannot be trusted (it contradicts ONNX shape inference)."""
        owner = self._owner(name) or self
        return owner.types.conflicts.get(name)

    def dims(self, name: str) -> Optional[List[Optional[int]]]:
        """Declared or inferred dims (None for a symbolic axis); None when unknown or contradictory."""
        owner = self._owner(name) or self
        if name in owner.types.conflicts:
            return None
        return owner.types.dims.get(name)

    def rank(self, name: str) -> Optional[int]:
        """The rank of a tensor, from its constant value or its declared/inferred type in its own scope."""
        owner = self._owner(name) or self
        if name in owner.initializers:
            return len(owner.initializers[name].dims)
        try:
            return self.constant(name).ndim
        except NotConstant:
            dims = self.dims(name)
            return None if dims is None else len(dims)

    def dtype(self, name: str) -> Optional[np.dtype]:
        """A tensor's dtype from its constant value or its declared or inferred type; None when unknown."""
        owner = self._owner(name) or self
        if name in owner.initializers:
            data_type = owner.initializers[name].data_type
            return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)) if data_type in NUMPY_ELEMENT_TYPES else None
        try:
            return self.constant(name).dtype
        except NotConstant:
            return owner.types.dtypes.get(name)

    # --- constants -----------------------------------------------------------------------------------------

    def constant(self, name: str) -> np.ndarray:
        """The value of a compile-time constant tensor, or NotConstant with the reason it is not one."""
        return self.constants.value(name)

    def is_constant(self, name: str) -> bool:
        try:
            self.constant(name)
        except NotConstant:
            return False
        return True

    # --- naming --------------------------------------------------------------------------------------------

    def unique_name(self, hint: str) -> str:
        """A name no tensor or node in the model uses yet, derived deterministically from `hint`."""
        names = self.model.names
        name, counter = hint, 1
        while name in names:
            name = f"{hint}_{counter}"
            counter += 1
        names.add(name)
        return name


class ModelScope:
    """What every scope of one model shares: IR version, default opset, the names in use, the constant budget."""

    def __init__(self, model: onnx.ModelProto, *, model_bytes: int, fold_input_initializers: bool = False):
        self.ir_version = model.ir_version
        self.opset = default_opset(model)
        self.names = all_names(model)
        self.fold_input_initializers = fold_input_initializers
        self.budget = ConstantBudget.for_model_bytes(model_bytes)


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            return opset.version
    return onnx.defs.onnx_opset_version()
