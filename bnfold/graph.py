"""A small index over one ONNX graph: producers, consumers, constants, unique names, and the edits rules make.

Rules read the graph through GraphContext and describe their edit as a Rewrite; GraphContext.apply() is the only
place that mutates protos, so a refused match leaves the graph untouched.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import InvalidModelError

# Constant subexpressions larger than this are not evaluated (a guard against ConstantOfShape bombs).
MAX_CONSTANT_ELEMENTS = 1 << 26

# Nodes that compute a constant from constants, and the evaluator for each (see _evaluate).
CONSTANT_OPS = {"Constant", "Identity", "Cast", "CastLike", "Reshape", "Unsqueeze", "Squeeze", "Flatten",
                "ConstantOfShape", "Shape", "Expand", "Transpose"}


# Default-domain ops bnfold reads; each is checked against its ONNX schema before any rule sees it.
VALIDATED_OPS = {"BatchNormalization", "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div",
                 "DequantizeLinear", *CONSTANT_OPS}


def validate_node(node: onnx.NodeProto, opset: int) -> None:
    """Raise InvalidModelError when a node of VALIDATED_OPS lacks a required input or output, or has an attribute
    of the wrong type: onnx.checker catches these, but users may skip it (--no-check) and rules index freely."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
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


# Tensor element types numpy can hold.
NUMPY_ELEMENT_TYPES = set(helper.get_all_tensor_dtypes()) - {onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING}


class NotConstant(Exception):
    """Raised while resolving a tensor that is not a compile-time constant; str() says why, for the report."""


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


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

    def visit_nodes(nodes: Iterable[onnx.NodeProto]) -> None:
        for node in nodes:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
            for sub in subgraphs(node):
                visit_graph(sub)

    def visit_graph(graph: onnx.GraphProto) -> None:
        names.update(v.name for v in graph.input)
        names.update(v.name for v in graph.output)
        names.update(t.name for t in graph.initializer)
        visit_nodes(graph.node)

    visit_graph(model.graph)
    for function in model.functions:
        names.update(function.input)
        names.update(function.output)
        visit_nodes(function.node)
    names.discard("")
    return names


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for index, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[index]
            break
    node.attribute.append(helper.make_attribute(name, value))


def node_label(node: onnx.NodeProto) -> str:
    """A name for messages: the node name, else its op type and first output."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


@dataclass
class InputUpdate:
    """Set input `index` of `node` to a constant holding `value` (already in its final dtype)."""

    node: onnx.NodeProto
    index: int
    value: np.ndarray
    name_hint: str


@dataclass
class Rewrite:
    """The complete edit a rule wants; GraphContext.apply() carries it out.

    `anchor` (the BN, or the first node of a decomposed BN) and `removed` disappear. Forward folds name an
    `output_node` that takes over `output` (default: the anchor's output), through the last `inserted` node if
    any. Backward folds instead `rewire` consumers' inputs. `inserted` nodes go right after `insert_after`
    (default: `output_node`, else the anchor's old position). `into` lists the nodes that absorbed the BN.
    """

    anchor: onnx.NodeProto
    into: List[onnx.NodeProto]
    output_node: Optional[onnx.NodeProto] = None
    output: Optional[str] = None
    updates: List[InputUpdate] = field(default_factory=list)
    attributes: Dict[str, object] = field(default_factory=dict)
    attribute_node: Optional[onnx.NodeProto] = None
    removed: List[onnx.NodeProto] = field(default_factory=list)
    inserted: List[onnx.NodeProto] = field(default_factory=list)
    insert_after: Optional[onnx.NodeProto] = None
    rewire: List[Tuple[onnx.NodeProto, int, str]] = field(default_factory=list)
    rounding_error: float = 0.0


class GraphContext:
    """Index and constant lookup for one graph; `parent` is the enclosing graph's context for subgraphs."""

    def __init__(
        self,
        graph: onnx.GraphProto,
        *,
        ir_version: int,
        names: Set[str],
        fold_input_initializers: bool = False,
        parent: Optional["GraphContext"] = None,
        path: str = "main",
        types=None,
        function: bool = False,
        opset: Optional[int] = None,
    ):
        self.graph = graph
        self.ir_version = ir_version
        self.names = names
        self.fold_input_initializers = fold_input_initializers
        self.parent = parent
        self.path = path
        self.types = types  # a bnfold.shapes.TensorTypes: declared and inferred dims and dtypes
        # A function body has no initializers: new constants become Constant nodes at the top of the body.
        self.function = function
        self._prepended: List[onnx.NodeProto] = []
        self.initializers: Dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.input_names = {v.name for v in graph.input}
        self.output_names = {v.name for v in graph.output}
        self.producers: Dict[str, onnx.NodeProto] = {}
        self.consumers: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
        # Wrappers of protobuf messages are created on access: hold one per node so identities stay stable.
        self.nodes: List[onnx.NodeProto] = list(graph.node)
        for node in self.nodes:
            if opset is not None and node.op_type in VALIDATED_OPS and node.domain in ("", "ai.onnx"):
                validate_node(node, opset)
            for name in node.output:
                if name:
                    self.producers[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
            for sub in subgraphs(node):
                for name in outer_scope_uses(sub):
                    self.consumers[name].append(node)
        self._removed: Set[int] = set()
        self._inserted_after: Dict[int, List[onnx.NodeProto]] = defaultdict(list)
        self._constant_cache: Dict[str, np.ndarray] = {}
        # Tensors some edit stopped reading: the only candidates for dead-constant removal.
        self.touched: Set[str] = set()
        self._stale_value_info: Set[str] = set()

    # --- reading -------------------------------------------------------------------------------------------

    def is_graph_output(self, name: str) -> bool:
        return name in self.output_names

    def users(self, name: str) -> List[onnx.NodeProto]:
        """Live consumers of a tensor in this graph (a node using it twice appears twice)."""
        return [node for node in self.consumers.get(name, ()) if id(node) not in self._removed]

    def sole_consumer(self, name: str) -> Optional[onnx.NodeProto]:
        users = self.users(name)
        return users[0] if len(users) == 1 and not self.is_graph_output(name) else None

    def producer(self, name: str) -> Optional[onnx.NodeProto]:
        node = self.producers.get(name)
        return None if node is None or id(node) in self._removed else node

    def rank(self, name: str) -> Optional[int]:
        """The rank of a tensor, from constants or (inferred) value_info; None when nothing says."""
        if name in self.initializers:
            return len(self.initializers[name].dims)
        try:
            return self.constant(name).ndim
        except NotConstant:
            dims = self.dims(name)
            return None if dims is None else len(dims)

    def dims(self, name: str) -> Optional[List[Optional[int]]]:
        """Declared or inferred dims of a tensor (None for a symbolic axis); None when its shape is unknown."""
        return self.types.dims.get(name) if self.types is not None else None

    def dtype(self, name: str) -> Optional[np.dtype]:
        """A tensor's dtype from its constant value or its declared or inferred type; None when unknown."""
        if name in self.initializers:
            data_type = self.initializers[name].data_type
            return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)) if data_type in NUMPY_ELEMENT_TYPES else None
        try:
            return self.constant(name).dtype
        except NotConstant:
            return self.types.dtypes.get(name) if self.types is not None else None

    def _initializer_is_constant(self, name: str) -> bool:
        """Below IR 4 every initializer is also an input and runtimes treat it as a constant; from IR 4 on, one
        that is also a graph input is an overridable default unless the user asked to treat it as constant."""
        return name not in self.input_names or self.ir_version < 4 or self.fold_input_initializers

    def constant(self, name: str) -> np.ndarray:
        """The value of a compile-time constant tensor, or NotConstant with the reason it is not one."""
        if name in self._constant_cache:
            return self._constant_cache[name]
        value = self._resolve(name)
        if name not in self.initializers:
            # Only computed constants are cached: initializers are cheap to read again, and caching every weight
            # would hold a second copy of the model.
            self._constant_cache[name] = value
        return value

    def _resolve(self, name: str) -> np.ndarray:
        if not name:
            raise NotConstant("input is empty")
        if name in self.initializers:
            if not self._initializer_is_constant(name):
                raise NotConstant(
                    f"{name!r} is an initializer that is also a graph input (an overridable default from IR 4 on); "
                    "pass --fold-input-initializers to treat such inputs as constants"
                )
            return self._tensor_value(self.initializers[name])
        node = self.producer(name)
        if node is None:
            if name in self.input_names:
                kind = "function input (set per call site)" if self.function else "graph input"
                raise NotConstant(f"{name!r} is a {kind}, not a constant")
            if self.parent is not None:
                return self.parent.constant(name)
            raise NotConstant(f"{name!r} is not produced by any node or initializer")
        if node.op_type not in CONSTANT_OPS or node.domain not in ("", "ai.onnx"):
            raise NotConstant(f"{name!r} is computed at run time by {node.op_type} node {node_label(node)!r}")
        return self._evaluate(node)

    @staticmethod
    def _tensor_value(tensor: onnx.TensorProto) -> np.ndarray:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise NotConstant(f"{tensor.name!r} holds external data that was not loaded (load the model from its "
                              "file with bnfold.load_model)")
        try:
            return numpy_helper.to_array(tensor)
        except (ValueError, TypeError, KeyError) as error:
            raise NotConstant(f"tensor {tensor.name!r} cannot be read ({error})") from None

    def _evaluate(self, node: onnx.NodeProto) -> np.ndarray:
        """Evaluate a constant-only node; numpy's complaints about malformed constants mean "not a constant"."""
        try:
            return self._evaluate_op(node)
        except (ValueError, IndexError, TypeError, KeyError) as error:
            raise NotConstant(f"cannot evaluate {node.op_type} node {node_label(node)!r}: {error}") from None

    def _evaluate_op(self, node: onnx.NodeProto) -> np.ndarray:
        """Evaluate a node of CONSTANT_OPS (the few shapes exporters emit for weights)."""
        op = node.op_type
        if op == "Constant":
            for attr in node.attribute:
                if attr.ref_attr_name:
                    raise NotConstant(f"Constant node {node_label(node)!r} takes its value from function attribute "
                                      f"{attr.ref_attr_name!r}, set per call site")
                if attr.name == "value":
                    return self._tensor_value(attr.t)
                if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    return np.array(helper.get_attribute_value(attr),
                                    dtype=np.float32 if attr.name.startswith("value_float") else np.int64)
            raise NotConstant(f"Constant node {node_label(node)!r} holds a kind of value bnfold does not read")
        if op == "Shape":
            # Shape needs only the input's shape; it is constant when the input is.
            shape = np.array(self.constant(node.input[0]).shape, dtype=np.int64)
            start, end = attribute(node, "start", 0), attribute(node, "end", None)
            return shape[start:end]
        # CastLike needs only the dtype of its second input, which may well be run-time data.
        needed = node.input[:1] if op == "CastLike" else node.input
        inputs = [self.constant(name) if name else None for name in needed]
        data = inputs[0]
        if op == "Identity":
            return data
        if op == "Cast":
            return data.astype(helper.tensor_dtype_to_np_dtype(attribute(node, "to")))
        if op == "CastLike":
            target = self.dtype(node.input[1])
            if target is None:
                raise NotConstant(f"the type of {node.input[1]!r}, which CastLike copies, is not declared")
            return data.astype(target)
        if op == "Reshape":
            shape = [int(d) for d in inputs[1]]
            if not attribute(node, "allowzero", 0):
                shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
            return data.reshape(shape)
        if op in ("Unsqueeze", "Squeeze"):
            axes = attribute(node, "axes", None)
            if axes is None and len(inputs) > 1 and inputs[1] is not None:
                axes = [int(a) for a in inputs[1]]
            if op == "Squeeze":
                return np.squeeze(data, axis=tuple(axes) if axes is not None else None)
            rank = data.ndim + len(axes)
            for axis in sorted(a % rank for a in axes):
                data = np.expand_dims(data, axis)
            return data
        if op == "Flatten":
            axis = attribute(node, "axis", 1) % max(data.ndim, 1) if data.ndim else 0
            return data.reshape(int(np.prod(data.shape[:axis])), -1)
        if op == "Transpose":
            return np.transpose(data, attribute(node, "perm", None))
        if op in ("ConstantOfShape", "Expand"):
            shape = [int(d) for d in (data if op == "ConstantOfShape" else inputs[1])]
            if int(np.prod(shape)) > MAX_CONSTANT_ELEMENTS:
                raise NotConstant(f"{op} node {node_label(node)!r} would build more than {MAX_CONSTANT_ELEMENTS} values")
            if op == "Expand":
                return np.broadcast_to(data, np.broadcast_shapes(data.shape, tuple(shape))).copy()
            fill = attribute(node, "value", None)
            fill_value = numpy_helper.to_array(fill) if fill is not None else np.zeros(1, np.float32)
            return np.full(shape, fill_value.reshape(-1)[0], dtype=fill_value.dtype)
        raise NotConstant(f"bnfold cannot evaluate {op} node {node_label(node)!r}")

    # --- naming --------------------------------------------------------------------------------------------

    def unique_name(self, hint: str) -> str:
        """A name no tensor or node in the model uses yet, derived deterministically from `hint`."""
        name, counter = hint, 1
        while name in self.names:
            name = f"{hint}_{counter}"
            counter += 1
        self.names.add(name)
        return name

    # --- editing -------------------------------------------------------------------------------------------

    def _set_constant_input(self, update: InputUpdate) -> None:
        """Point the node's input at a constant with the new value: overwrite a private initializer in place,
        or create a new one when the old value is shared, overridable, produced by nodes, or absent."""
        node, index = update.node, update.index
        old = node.input[index] if index < len(node.input) else ""
        tensor = self.initializers.get(old)
        private = (
            tensor is not None
            and old not in self.input_names
            and not self.is_graph_output(old)
            and len(self.users(old)) == 1
        )
        if private:
            tensor.CopyFrom(numpy_helper.from_array(update.value, old))
            return
        name = self.unique_name(update.name_hint)
        if self.function:
            constant = helper.make_node("Constant", [], [name], name=self.unique_name(f"{name}_constant"),
                                        value=numpy_helper.from_array(update.value, name))
            self._prepended.append(constant)
            self.producers[name] = constant
        else:
            new_tensor = self.graph.initializer.add()
            new_tensor.CopyFrom(numpy_helper.from_array(update.value, name))
            self.initializers[name] = new_tensor
            if self.ir_version < 4:
                # Below IR 4 every initializer must also be listed as a graph input.
                self.graph.input.append(helper.make_tensor_value_info(name, new_tensor.data_type,
                                                                      update.value.shape))
                self.input_names.add(name)
        while len(node.input) <= index:
            node.input.append("")
        if old:
            self._drop_use(old, node)
            self.touched.add(old)
        node.input[index] = name
        self.consumers[name].append(node)

    def _drop_use(self, name: str, node: onnx.NodeProto) -> None:
        """Forget one use of `name` by `node` (a node may read the same tensor twice)."""
        users = self.consumers.get(name, [])
        for index, user in enumerate(users):
            if user is node:
                del users[index]
                return

    def is_removed(self, node: onnx.NodeProto) -> bool:
        return id(node) in self._removed

    def apply(self, rewrite: Rewrite) -> None:
        """Carry out a rule's Rewrite (see Rewrite for what each field means)."""
        # Inserted nodes read their inputs from the start; updates may then repoint one of them.
        for node in rewrite.inserted:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        for update in rewrite.updates:
            self._set_constant_input(update)
        for name, value in rewrite.attributes.items():
            set_attribute(rewrite.attribute_node or rewrite.output_node, name, value)
        for node in (rewrite.anchor, *rewrite.removed):
            self._removed.add(id(node))
            for name in node.input:
                if name:
                    self._drop_use(name, node)
                    self.touched.add(name)
        self._inserted_after[id(rewrite.insert_after or rewrite.output_node or rewrite.anchor)].extend(
            rewrite.inserted)
        if rewrite.output_node is not None:
            last = rewrite.inserted[-1] if rewrite.inserted else rewrite.output_node
            old_output, new_output = last.output[0], rewrite.output or rewrite.anchor.output[0]
            self.consumers.pop(old_output, None)
            self.producers.pop(old_output, None)
            last.output[0] = new_output
            self._stale_value_info.add(old_output)
        for node in rewrite.inserted:
            for name in node.output:
                self.producers[name] = node
        if rewrite.output_node is not None and not rewrite.inserted:
            self.producers[rewrite.output_node.output[0]] = rewrite.output_node
        for node, index, name in rewrite.rewire:
            self._drop_use(node.input[index], node)
            node.input[index] = name
            self.consumers[name].append(node)

    def finish(self) -> None:
        """Write the edits back: removed nodes out, inserted ones in place, dead constants and stale value_info gone.

        Deleting by index keeps the protos in place (no copy of Constant-node tensors); only inserted nodes force
        the node list to be rebuilt.
        """
        dead_initializers = self._dead_initializers()
        if self._prepended or any(self._inserted_after.values()):
            nodes = list(self._prepended)
            for node in self.nodes:
                if id(node) not in self._removed:
                    nodes.append(node)
                nodes.extend(self._inserted_after.get(id(node), ()))
            copies = [onnx.NodeProto() for _ in nodes]
            for target, source in zip(copies, nodes):
                target.CopyFrom(source)
            del self.graph.node[:]
            self.graph.node.extend(copies)
        else:
            removed = [i for i, node in enumerate(self.nodes) if id(node) in self._removed]
            for index in reversed(removed):
                del self.graph.node[index]
        _delete_where(self.graph.initializer, lambda tensor: tensor.name in dead_initializers)
        if self.ir_version < 4:
            _delete_where(self.graph.input, lambda value: value.name in dead_initializers)
        _delete_where(self.graph.value_info, lambda value: value.name in self._stale_value_info)

    def _remove_dead_constants(self) -> None:
        """Remove constant-producing nodes and initializers that folding left without a consumer.

        Only constants whose readers a fold changed are candidates: whatever else the user put in the model
        stays, used or not.
        """
        changed = True
        while changed:
            changed = False
            for node in self.nodes:
                if id(node) in self._removed or node.op_type not in CONSTANT_OPS:
                    continue
                if not any(name in self.touched for name in node.output):
                    continue
                if any(self.users(name) or self.is_graph_output(name) for name in node.output if name):
                    continue
                if not self._feeds_only_constants(node):
                    continue
                self._removed.add(id(node))
                for name in node.input:
                    if name:
                        self._drop_use(name, node)
                        self.touched.add(name)
                changed = True

    def _dead_initializers(self) -> Set[str]:
        """Initializers a fold touched that nothing reads any more; from IR 4 on, ones that are also graph inputs
        stay (a user-facing input with a default)."""
        self._remove_dead_constants()
        return {
            name
            for name in self.touched
            if name in self.initializers
            and not self.users(name)
            and not self.is_graph_output(name)
            and not (name in self.input_names and self.ir_version >= 4)
        }

    def _feeds_only_constants(self, node: onnx.NodeProto) -> bool:
        """A dead node is removable when it depends on constants only (never on a graph input's data)."""
        try:
            for name in node.output:
                if name:
                    self.constant(name)
        except NotConstant:
            return False
        return True



def _delete_where(repeated, predicate) -> None:
    """Delete the elements of a protobuf repeated field that match, in place, last index first."""
    for index in reversed([i for i, item in enumerate(repeated) if predicate(item)]):
        del repeated[index]
