"""What one fold replaced, as data: the local check runs `before` and `after` on their own and compares them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from .edits import NODE_OPERATIONS, Rename
from .nodes import NotConstant

Dims = Tuple[Optional[int], ...]  # None where the size is not known


@dataclass
class PieceInput:
    """A run-time tensor the piece reads: its name, element type and dims as far as the model says."""

    name: str
    dtype: np.dtype
    dims: Dims


@dataclass
class Piece:
    """A self-contained part of one graph before and after a single fold.

    `before` are copies of the nodes the fold replaced, `after` copies of the nodes that replaced them; both read
    `inputs` (run-time data) and constants (`constants_before` / `constants_after`, by tensor name), and both
    compute every tensor in `outputs`. Output tensors carry their channels on axis `channel_axes[name]` (None: no
    channel axis), so the check can compare each channel against its own magnitude.
    """

    label: str  # the fold this piece checks, as the report names it
    inputs: List[PieceInput]
    outputs: List[str]
    before: List[onnx.NodeProto]
    after: List[onnx.NodeProto]
    constants_before: Dict[str, np.ndarray] = field(default_factory=dict)
    constants_after: Dict[str, np.ndarray] = field(default_factory=dict)
    channel_axes: Dict[str, Optional[int]] = field(default_factory=dict)


def _involved(edit, index) -> List[onnx.NodeProto]:
    """The existing nodes an edit reads, changes or removes, plus the constant-only nodes feeding them (a
    DequantizeLinear whose scale absorbs the BN), in graph order."""
    nodes = {}
    for operation in edit.operations:
        if isinstance(operation, NODE_OPERATIONS):
            nodes[id(operation.node)] = operation.node
        elif isinstance(operation, Rename):
            producer = index.producer(operation.old)
            if producer is not None:
                nodes[id(producer)] = producer
    for node in (*edit.into, *edit.through):
        nodes[id(node)] = node
    # Nodes an earlier fold inserted (a standalone BN's Mul + Add, which a branch merge removes) are part of the
    # graph now; only this edit's own new nodes are not there yet.
    new = {id(node) for node in edit.inserted()}
    existing = {key: node for key, node in nodes.items() if key in index.editor.key and key not in new}
    pending = list(existing.values())
    while pending:
        for name in pending.pop().input:
            producer = index.producer(name) if name else None
            if producer is None or id(producer) in existing or index.is_constant(name):
                continue
            if all(not n or index.is_constant(n) or id(index.producer(n)) in existing for n in producer.input):
                existing[id(producer)] = producer
                pending.append(producer)
    return sorted(existing.values(), key=lambda node: index.editor.key[id(node)])


def _inputs_and_constants(nodes, index, reader_dims=None):
    produced = {name for node in nodes for name in node.output if name}
    inputs, constants = {}, {}
    for node in nodes:
        for name in node.input:
            if not name or name in produced or name in inputs or name in constants:
                continue
            try:
                constants[name] = index.constant(name)
            except NotConstant:  # a run-time tensor: the piece reads it as an input
                dims = index.dims(name)
                if dims is None and reader_dims is not None:
                    dims = next((found for node in nodes if node.input and node.input[0] == name
                                 for found in [reader_dims(node, index)] if found is not None), None)
                inputs[name] = PieceInput(name, index.dtype(name) or np.dtype(np.float32),
                                          tuple(dims) if dims is not None else ())
    return list(inputs.values()), constants


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


class PieceBuilder:
    """Records one fold as a Piece: `before()` ahead of the edit, `after()` once it is applied."""

    def __init__(self, label: str, edit, index, channel_axes: Dict[str, Optional[int]], reader_dims=None):
        """reader_dims(node, index): what a node reading a tensor as its data input says of its dims (None when
        nothing), for inputs the model does not declare."""
        self.label, self.edit, self.index = label, edit, index
        self.nodes = _involved(edit, index)
        ids = {id(node) for node in self.nodes}
        self.inputs, self.constants = _inputs_and_constants(self.nodes, index, reader_dims)
        self.outputs: List[str] = []
        self.readers: Dict[str, tuple] = {}  # output -> (a reader outside the piece, its input position)
        for node in self.nodes:
            for name in node.output:
                # Shape readers see only the shape, which a fold keeps: they are no reason to compare values.
                outside = [user for user in index.value_readers(name) if id(user) not in ids]
                if outside or index.is_graph_output(name):
                    self.outputs.append(name)
                    if outside and name in outside[0].input:
                        self.readers[name] = (outside[0], list(outside[0].input).index(name))
        self.before_nodes = [_copy(node) for node in self.nodes]
        self.channel_axes = {name: channel_axes.get(name, 1) for name in self.outputs}

    def after(self) -> Piece:
        index = self.index
        inserted = self.edit.inserted()
        nodes = [node for node in self.nodes if not index.is_removed(node)] + inserted
        nodes.sort(key=lambda node: index.editor.key[id(node)])
        after_nodes = [_copy(node) for node in nodes]
        for name in self.outputs:
            reader = self.readers.get(name)
            now = reader[0].input[reader[1]] if reader is not None else name
            if now != name:  # the edit moved the readers to a new tensor: compare it under the old name
                _rename_inside(after_nodes, name, f"{name}__before_edit")
                after_nodes.append(helper.make_node("Identity", [now], [name]))
        _, constants_after = _inputs_and_constants(nodes, index)
        return Piece(self.label, self.inputs, self.outputs, self.before_nodes, after_nodes, self.constants,
                     constants_after, self.channel_axes)


def _rename_inside(nodes: List[onnx.NodeProto], old: str, new: str) -> None:
    """Rename tensor `old` to `new` among a piece's own nodes (what they produce and read)."""
    for node in nodes:
        for field_ in (node.input, node.output):
            for position, name in enumerate(field_):
                if name == old:
                    field_[position] = new
