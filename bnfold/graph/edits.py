"""The edits a fold makes, as a plan of typed operations (dataclasses) that the Editor (graph.editor) carries out
on a graph index.

A rule describes its whole fold as an Edit before anything changes, so a refused match leaves the graph
byte-identical. The operations:

- SetConstant(node, position, value): node's input `position` reads a constant holding `value` (a private
  initializer is overwritten in place; a shared, overridable or computed one is left alone and a new one is made);
- ReplaceUses(old, new): every node that reads `old` reads `new` instead;
- Rename(old, new): the node producing `old` produces `new` instead, and `old`'s remaining readers follow
  (a fold hands the BN's output name to the node that now computes it, so graph outputs and names stay);
- Remove(node), and Bypass(node): remove it and let its readers read its data input;
- InsertAfter(anchor, nodes): new nodes, placed right after `anchor` in the node order;
- SetAttribute(node, name, value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np
import onnx

if TYPE_CHECKING:
    from .editor import Editor


@dataclass(frozen=True)
class SetConstant:
    """node.input[position] reads a constant holding `value` (a new tensor is named after `hint`)."""

    node: onnx.NodeProto
    position: int
    value: np.ndarray
    hint: str

    def run(self, editor: "Editor") -> None:
        editor.set_constant(self.node, self.position, self.value, self.hint)


@dataclass(frozen=True)
class ReplaceUses:
    """Every node that reads `old` reads `new` instead."""

    old: str
    new: str

    def run(self, editor: "Editor") -> None:
        editor.replace_uses(self.old, self.new)


@dataclass(frozen=True)
class Rename:
    """The node producing `old` produces `new` instead; `old`'s remaining readers follow."""

    old: str
    new: str

    def run(self, editor: "Editor") -> None:
        editor.rename(self.old, self.new)


@dataclass(frozen=True)
class Remove:
    node: onnx.NodeProto

    def run(self, editor: "Editor") -> None:
        editor.remove(self.node)


@dataclass(frozen=True)
class Bypass:
    """Remove `node`; its readers read its input `data_position` (whatever that names when applied)."""

    node: onnx.NodeProto
    data_position: int

    def run(self, editor: "Editor") -> None:
        editor.bypass(self.node, self.data_position)


@dataclass(frozen=True)
class SetAttribute:
    node: onnx.NodeProto
    name: str
    value: object

    def run(self, editor: "Editor") -> None:
        editor.set_attribute(self.node, self.name, self.value)


@dataclass(frozen=True)
class InsertAfter:
    """New `nodes`, placed right after `anchor` (None: first) in the node order."""

    anchor: Optional[onnx.NodeProto]
    nodes: Tuple[onnx.NodeProto, ...]

    def run(self, editor: "Editor") -> None:
        editor.insert_after(self.anchor, list(self.nodes))


# The operations that change an existing node in place (what the local check's piece must hold).
NODE_OPERATIONS = (SetConstant, Remove, Bypass, SetAttribute)


@dataclass
class Edit:
    """The operations of one fold, in order, and what the report says of it."""

    operations: List[object] = field(default_factory=list)
    into: List[onnx.NodeProto] = field(default_factory=list)  # the nodes that absorbed the BN
    through: List[onnx.NodeProto] = field(default_factory=list)  # look-through nodes the fold crossed
    rounding_error: float = 0.0
    output_axes: Dict[str, Optional[int]] = field(default_factory=dict)  # channel axis of what the fold outputs

    def set_constant(self, node: onnx.NodeProto, index: int, value: np.ndarray, hint: str) -> None:
        self.operations.append(SetConstant(node, index, value, hint))

    def replace_uses(self, old: str, new: str) -> None:
        self.operations.append(ReplaceUses(old, new))

    def rename(self, old: str, new: str) -> None:
        self.operations.append(Rename(old, new))

    def remove(self, node: onnx.NodeProto) -> None:
        self.operations.append(Remove(node))

    def bypass(self, node: onnx.NodeProto, data_position: int) -> None:
        self.operations.append(Bypass(node, data_position))

    def set_attribute(self, node: onnx.NodeProto, name: str, value) -> None:
        self.operations.append(SetAttribute(node, name, value))

    def insert_after(self, anchor: Optional[onnx.NodeProto], nodes: List[onnx.NodeProto]) -> None:
        self.operations.append(InsertAfter(anchor, tuple(nodes)))

    def inserted(self) -> List[onnx.NodeProto]:
        """The new nodes the edit places."""
        return [node for operation in self.operations if isinstance(operation, InsertAfter)
                for node in operation.nodes]
