"""Compile-time constants: initializers, Constant nodes, and what exporters compute from them (Identity, Cast,
Reshape, Transpose, Shape, Expand, ...), evaluated with one small function per op.

Each evaluator follows the ONNX specification; where the specification and the runtimes disagree (Squeeze with an
empty `axes` input: ONNX Runtime squeezes every size-1 axis, the reference evaluator none), the value is not a
constant bnfold may use. Evaluation is iterative (deep chains cannot overflow the stack), refuses cycles, and
draws on one budget of bytes for every computed value of the model, checked before anything is allocated:
exceeding it means "not a constant", never an out-of-memory kill.

Over 300 lines on purpose: one small evaluator per op, kept together with the budget they share.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper

from .. import tensor_store
from .nodes import DEFAULT_DOMAINS, NotConstant, attribute, node_label

# The budget for computed constants: this many times the model's own tensor bytes, and never less than the floor.
BUDGET_MODEL_MULTIPLE = 2
BUDGET_FLOOR_BYTES = 256 << 20
RECENT_INITIALIZERS = 8

# What the reason says when a value is refused because it is an initializer that is also a graph input: the report
# counts the BNs kept for it (bnfold.initializer_inputs).
INITIALIZER_INPUT = "is an initializer that is also a graph input"

# Cast targets evaluated here: plain numpy types whose conversion ONNX defines like numpy does.
_CAST_TARGETS = {getattr(onnx.TensorProto, name) for name in (
    "FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64", "BOOL")}


class ConstantBudget:
    """Bytes that computed constants may still take, shared by every scope of one model."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    @classmethod
    def for_model_bytes(cls, model_bytes: int) -> "ConstantBudget":
        return cls(max(BUDGET_FLOOR_BYTES, BUDGET_MODEL_MULTIPLE * model_bytes))

    def charge(self, shape, dtype, node: onnx.NodeProto) -> None:
        """Reserve room for a value of `shape` and `dtype` before it is built, or refuse it."""
        elements = 1
        for dim in shape:
            if dim < 0:
                raise NotConstant(f"{node.op_type} node {node_label(node)!r} asks for a negative dimension {dim}")
            elements *= int(dim)
        size = elements * np.dtype(dtype).itemsize
        if self.used + size > self.limit:
            raise NotConstant(f"{node.op_type} node {node_label(node)!r} would build {size / 2**20:.1f} MiB, beyond "
                              f"bnfold's budget for computed constants ({self.limit / 2**20:.0f} MiB)")
        self.used += size


def tensor_value(tensor: onnx.TensorProto) -> np.ndarray:
    if tensor_store.is_external(tensor):
        raise NotConstant(f"{tensor.name!r} holds external data that was not loaded (load the model from its "
                          "file with bnfold.load_model)")
    try:
        return tensor_store.value(tensor)
    except (ValueError, TypeError, KeyError) as error:
        raise NotConstant(f"tensor {tensor.name!r} cannot be read ({error})") from None


def _ints(values: Optional[np.ndarray], node: onnx.NodeProto, what: str) -> List[int]:
    if values is None or values.ndim != 1 or values.dtype.kind not in "iu":
        raise NotConstant(f"{node.op_type} node {node_label(node)!r}: {what} must be a 1-D integer tensor")
    return [int(v) for v in values]


def _axes(node: onnx.NodeProto, inputs) -> Optional[List[int]]:
    """Squeeze/Unsqueeze axes: the attribute (opset < 13) or the optional second input."""
    axes = attribute(node, "axes", None)
    if axes is not None:
        return list(axes)
    if len(inputs) > 1 and inputs[1] is not None:
        return _ints(inputs[1], node, "axes")
    return None


def _constant(node, inputs, budget):
    for attr in node.attribute:
        if attr.ref_attr_name:
            raise NotConstant(f"Constant node {node_label(node)!r} takes its value from function attribute "
                              f"{attr.ref_attr_name!r}, set per call site")
        if attr.name == "value":
            return tensor_value(attr.t)
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.array(helper.get_attribute_value(attr),
                            dtype=np.float32 if attr.name.startswith("value_float") else np.int64)
    raise NotConstant(f"Constant node {node_label(node)!r} holds a kind of value bnfold does not read")


def _identity(node, inputs, budget):
    return inputs[0]


def _cast(node, inputs, budget, target=None):
    data = inputs[0]
    if target is None:
        to = attribute(node, "to")
        if to not in _CAST_TARGETS:
            raise NotConstant(f"Cast node {node_label(node)!r} casts to a type bnfold does not evaluate")
        target = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if data.dtype.kind not in "fiub" and data.dtype.name != "bfloat16":
        raise NotConstant(f"{node.op_type} node {node_label(node)!r} casts {data.dtype.name} data")
    if target.kind in "iu" and data.dtype.kind == "f":
        info = np.iinfo(target)
        finite = np.isfinite(data.astype(np.float64))
        if not finite.all() or data.size and (data.min() < info.min or data.max() > info.max):
            raise NotConstant(f"{node.op_type} node {node_label(node)!r}: values outside {target.name} "
                              "(ONNX leaves the result undefined)")
    budget.charge(data.shape, target, node)
    return data.astype(target)


def _cast_like(node, inputs, budget, index=None):
    target = index.dtype(node.input[1])
    if target is None:
        raise NotConstant(f"the type of {node.input[1]!r}, which CastLike copies, is not known")
    return _cast(node, inputs, budget, np.dtype(target))


def _reshape(node, inputs, budget):
    data = inputs[0]
    shape = _ints(inputs[1], node, "the shape")
    if not attribute(node, "allowzero", 0):
        if any(d == 0 and i >= data.ndim for i, d in enumerate(shape)):
            raise NotConstant(f"Reshape node {node_label(node)!r} copies a dimension past the input's rank")
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
        raise NotConstant(f"Reshape node {node_label(node)!r} has an invalid target {shape}")
    return data.reshape(shape)


def _squeeze(node, inputs, budget):
    data = inputs[0]
    axes = _axes(node, inputs)
    if axes is None:
        return np.squeeze(data)
    if not axes:
        raise NotConstant(f"Squeeze node {node_label(node)!r} has an empty axes input, which runtimes read "
                          "differently (squeeze all or none)")
    return np.squeeze(data, axis=tuple(axes))


def _unsqueeze(node, inputs, budget):
    axes = _axes(node, inputs)
    if not axes:
        raise NotConstant(f"Unsqueeze node {node_label(node)!r} has no axes")
    return np.expand_dims(inputs[0], axis=tuple(axes))


def _flatten(node, inputs, budget):
    """[d0 x ... x d(axis-1), d(axis) x ... x d(n-1)], axis in [-r, r]: axis == r gives [N, 1]."""
    data = inputs[0]
    axis = int(attribute(node, "axis", 1))
    if not -data.ndim <= axis <= data.ndim:
        raise NotConstant(f"Flatten node {node_label(node)!r} has axis {axis} outside [-{data.ndim}, {data.ndim}]")
    axis = axis + data.ndim if axis < 0 else axis
    return data.reshape(int(np.prod(data.shape[:axis], dtype=np.int64)),
                        int(np.prod(data.shape[axis:], dtype=np.int64)))


def _transpose(node, inputs, budget):
    perm = attribute(node, "perm", None)
    data = inputs[0]
    if perm is not None and sorted(perm) != list(range(data.ndim)):
        raise NotConstant(f"Transpose node {node_label(node)!r} has perm {list(perm)} for rank {data.ndim}")
    return np.transpose(data, perm)


def _shape(node, inputs, budget):
    shape = np.array(inputs[0].shape, dtype=np.int64)
    start, end = attribute(node, "start", 0), attribute(node, "end", None)
    return shape[start:end]


def _expand(node, inputs, budget):
    data = inputs[0]
    target = np.broadcast_shapes(data.shape, tuple(_ints(inputs[1], node, "the shape")))
    budget.charge(target, data.dtype, node)
    return np.broadcast_to(data, target).copy()


def _constant_of_shape(node, inputs, budget):
    shape = _ints(inputs[0], node, "the shape")
    fill = attribute(node, "value", None)
    fill_value = tensor_store.value(fill) if fill is not None else np.zeros(1, np.float32)
    if fill_value.size != 1:
        raise NotConstant(f"ConstantOfShape node {node_label(node)!r} has a fill value of {fill_value.size} elements")
    budget.charge(shape, fill_value.dtype, node)
    return np.full(shape, fill_value.reshape(-1)[0], dtype=fill_value.dtype)


# op type -> (evaluator, which inputs must be constant: None for all)
EVALUATORS: Dict[str, tuple] = {
    "Constant": (_constant, ()),
    "Identity": (_identity, None),
    "Cast": (_cast, None),
    "CastLike": (_cast_like, (0,)),  # needs only the dtype of input 1, which may be run-time data
    "Reshape": (_reshape, None),
    "Squeeze": (_squeeze, None),
    "Unsqueeze": (_unsqueeze, None),
    "Flatten": (_flatten, None),
    "Transpose": (_transpose, None),
    "Shape": (_shape, None),
    "Expand": (_expand, None),
    "ConstantOfShape": (_constant_of_shape, None),
}
CONSTANT_OPS = frozenset(EVALUATORS)


class ConstantEvaluator:
    """Values of one scope's constant tensors, computed on demand and cached (failures too)."""

    def __init__(self, index):
        self.index = index
        self.cache: Dict[str, np.ndarray] = {}
        self.failures: Dict[str, str] = {}
        # The last few initializers read: a fold reads a weight several times; all of them would be a model copy.
        self.recent: "OrderedDict[str, np.ndarray]" = OrderedDict()

    def forget(self, name: str) -> None:
        """An edit rewrote initializer `name` in place."""
        self.recent.pop(name, None)

    def _initializer(self, name: str) -> np.ndarray:
        value = self.recent.get(name)
        if value is None:
            value = tensor_value(self.index.initializers[name])
            value.flags.writeable = False  # shared by every reader until it leaves the cache
            self.recent[name] = value
            if len(self.recent) > RECENT_INITIALIZERS:
                self.recent.popitem(last=False)
        return value

    def _leaf(self, name: str):
        """The value of `name` if it needs no evaluation here, the producing node if it does; or NotConstant."""
        index = self.index
        if not name:
            raise NotConstant("input is empty")
        if name in self.cache:
            return self.cache[name], None
        if name in self.failures:
            raise NotConstant(self.failures[name])
        if name in index.initializers:
            if not self._initializer_is_constant(name):
                raise NotConstant(
                    f"{name!r} {INITIALIZER_INPUT} (an overridable default from IR 4 on); "
                    "pass --fold-input-initializers to treat such inputs as constants")
            return self._initializer(name), None
        node = index.producer(name)
        if node is None:
            if name in index.input_names:
                kind = "function input (set per call site)" if index.function else "graph input"
                raise NotConstant(f"{name!r} is a {kind}, not a constant")
            if index.parent is not None:
                return index.parent.constant(name), None
            raise NotConstant(f"{name!r} is not produced by any node or initializer")
        if node.op_type not in EVALUATORS or node.domain not in DEFAULT_DOMAINS:
            raise NotConstant(f"{name!r} is computed at run time by {node.op_type} node {node_label(node)!r}")
        return None, node

    def _initializer_is_constant(self, name: str) -> bool:
        """Below IR 4 every initializer is also an input and runtimes treat it as a constant; from IR 4 on, one
        that is also a graph input is an overridable default unless the user asked to treat it as constant."""
        index = self.index
        return (name not in index.input_names or index.model.ir_version < 4
                or index.model.fold_input_initializers)

    def value(self, name: str) -> np.ndarray:
        try:
            value, node = self._leaf(name)
            if node is None:
                return value
            for pending in self._evaluation_order(node):
                self._evaluate(pending)
            return self.cache[name]
        except NotConstant as why:
            self.failures[name] = str(why)
            raise

    @staticmethod
    def _needed(node: onnx.NodeProto) -> List[str]:
        which = EVALUATORS[node.op_type][1]
        names = list(node.input) if which is None else [node.input[i] for i in which if i < len(node.input)]
        return [name for name in names if name]

    def _evaluation_order(self, root: onnx.NodeProto) -> List[onnx.NodeProto]:
        """The nodes to evaluate for `root`, inputs first (iterative depth-first search; a cycle is refused)."""
        order, state = [], {}
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            key = id(node)
            if expanded:
                state[key] = "done"
                order.append(node)
                continue
            if state.get(key) == "done":
                continue
            if state.get(key) == "open":
                raise NotConstant(f"{node.op_type} node {node_label(node)!r} depends on its own output (a cycle)")
            state[key] = "open"
            stack.append((node, True))
            for name in self._needed(node):
                _, producer = self._leaf(name)
                if producer is None:
                    continue
                if state.get(id(producer)) == "open":
                    raise NotConstant(f"{producer.op_type} node {node_label(producer)!r} depends on its own output "
                                      "(a cycle)")
                if state.get(id(producer)) != "done":
                    stack.append((producer, False))
        return order

    def _evaluate(self, node: onnx.NodeProto) -> None:
        if all(name in self.cache for name in node.output if name):
            return
        function, which = EVALUATORS[node.op_type]
        inputs = [self._leaf(name)[0] if name else None for name in
                  (node.input if which is None else [node.input[i] for i in which if i < len(node.input)])]
        try:
            if node.op_type == "CastLike":
                result = _cast_like(node, inputs, self.index.model.budget, index=self.index)
            else:
                result = function(node, inputs, self.index.model.budget)
        except NotConstant:
            raise
        except (ValueError, IndexError, TypeError, KeyError, OverflowError) as error:
            raise NotConstant(f"cannot evaluate {node.op_type} node {node_label(node)!r}: {error}") from None
        self.cache[node.output[0]] = result
