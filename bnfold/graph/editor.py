"""The Editor: carries out Edits (graph.edits) on one graph index and writes the result back to its graph.

apply() is all or nothing: every change it makes to a node, a tensor, the graph or the index is journaled first,
and an exception half-way puts all of them back, so a fold that fails while it is applied leaves the graph (and the
index later folds read) as it was; an edit that would leave a reader of a tensor it removed is undone the same
way. finish() writes the index back to the graph in one pass: removed nodes out, inserted ones in place, constants
the fold left unread removed, stale value_info dropped; linear in the graph's size.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, List, Optional, Set

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import tensor_store
from .constants import CONSTANT_OPS
from .nodes import NotConstant, node_label, subgraphs

_MISSING = object()


class Journal:
    """How to undo what one edit changed so far: each container is saved once, before its first change."""

    def __init__(self):
        self.undo: List[Callable[[], None]] = []
        self.saved: Set[tuple] = set()

    def _first(self, *key) -> bool:
        if key in self.saved:
            return False
        self.saved.add(key)
        return True

    def message(self, message) -> None:
        """A NodeProto or TensorProto about to change in place."""
        if self._first(id(message)):
            copy = type(message)()
            copy.CopyFrom(message)
            self.undo.append(lambda: message.CopyFrom(copy))

    def entry(self, mapping: dict, key) -> None:
        """mapping[key] about to be set, popped, or (a list) changed in place."""
        if self._first(id(mapping), key):
            old = mapping.get(key, _MISSING) if not isinstance(mapping, defaultdict) else (
                mapping[key] if key in mapping else _MISSING)
            old = list(old) if isinstance(old, list) else old
            self.undo.append(lambda: mapping.pop(key, None) if old is _MISSING else mapping.__setitem__(key, old))

    def member(self, members: set, item) -> None:
        """`item` about to be added to or discarded from `members`."""
        if self._first(id(members), item):
            present = item in members
            self.undo.append(lambda: members.add(item) if present else members.discard(item))

    def length(self, sequence) -> None:
        """A list or repeated field about to grow at its end."""
        if self._first(id(sequence), "length"):
            size = len(sequence)
            self.undo.append(lambda: sequence.__delitem__(slice(size, None)))

    def call(self, undo: Callable[[], None]) -> None:
        self.undo.append(undo)

    def rollback(self) -> None:
        for undo in reversed(self.undo):
            undo()


class Editor:
    """Carries out Edits on one GraphIndex and writes the result back to its graph."""

    def __init__(self, index):
        self.index = index
        self.key: Dict[int, tuple] = {id(node): (position,) for position, node in enumerate(index.nodes)}
        self.inserted: List[onnx.NodeProto] = []
        self._children: Dict[int, int] = defaultdict(int)
        self.touched: Set[str] = set()  # tensors some edit stopped reading: candidates for dead-constant removal
        self.gone: Set[str] = set()  # tensor names no node produces any more
        self.journal: Optional[Journal] = None  # while apply() runs

    # --- journaled changes (outside apply(), e.g. in finish(), nothing is recorded) --------------------------

    def _save(self, message) -> None:
        if self.journal is not None:
            self.journal.message(message)

    def _entry(self, mapping: dict, key) -> None:
        if self.journal is not None:
            self.journal.entry(mapping, key)

    def _member(self, members: set, item) -> None:
        if self.journal is not None:
            self.journal.member(members, item)

    def _length(self, sequence) -> None:
        if self.journal is not None:
            self.journal.length(sequence)

    # --- the operations ------------------------------------------------------------------------------------

    def apply(self, edit, then: Optional[Callable[[], object]] = None):
        """Carry out `edit`, then call `then` (what must succeed for the fold to stand, e.g. recording its piece
        for the local check) and return its result; on any exception, undo everything and re-raise."""
        self.journal = journal = Journal()
        try:
            for operation in edit.operations:
                operation.run(self)
            self._check_no_dangling_reads(journal)
            return then() if then is not None else None
        except BaseException:
            journal.rollback()
            raise
        finally:
            self.journal = None

    def set_constant(self, node: onnx.NodeProto, index: int, value: np.ndarray, hint: str) -> None:
        ix = self.index
        old = node.input[index] if index < len(node.input) else ""
        tensor = ix.initializers.get(old)
        private = (tensor is not None and old not in ix.input_names and not ix.is_graph_output(old)
                   and len(ix.users(old)) == 1)
        if private:
            self._save(tensor)
            if self.journal is not None:
                self.journal.call(lambda: ix.constants.forget(old))
            ix.constants.forget(old)
            tensor_store.replace(tensor, value)
            return
        name = ix.unique_name(hint)
        if ix.function:
            constant = helper.make_node("Constant", [], [name], name=ix.unique_name(f"{name}_constant"),
                                        value=numpy_helper.from_array(value, name))
            self._place(constant, (-1, len(self.inserted)))
            self._entry(ix.producers, name)
            ix.producers[name] = constant
        else:
            self._length(ix.graph.initializer)
            new_tensor = ix.graph.initializer.add()
            new_tensor.CopyFrom(numpy_helper.from_array(value, name))
            self._entry(ix.initializers, name)
            ix.initializers[name] = new_tensor
            if ix.model.ir_version < 4:
                # Below IR 4 every initializer must also be listed as a graph input.
                self._length(ix.graph.input)
                ix.graph.input.append(helper.make_tensor_value_info(name, new_tensor.data_type, value.shape))
                self._member(ix.input_names, name)
                ix.input_names.add(name)
        self._save(node)
        while len(node.input) <= index:
            node.input.append("")
        if old:
            self._drop_use(old, node)
        node.input[index] = name
        self._entry(ix.consumers, name)
        ix.consumers[name].append(node)

    def replace_uses(self, old: str, new: str) -> None:
        ix = self.index
        for node in ix.users(old):
            self._save(node)
            for position, name in enumerate(node.input):
                if name == old:
                    node.input[position] = new
                    self._entry(ix.consumers, new)
                    ix.consumers[new].append(node)
            self._drop_all_uses(old, node)

    def rename(self, old: str, new: str) -> None:
        ix = self.index
        producer = ix.producer(old)
        self._save(producer)
        producer.output[list(producer.output).index(old)] = new
        self._entry(ix.producers, old)
        self._entry(ix.producers, new)
        ix.producers.pop(old, None)
        ix.producers[new] = producer
        self._member(self.gone, old)
        self._member(self.gone, new)
        self.gone.add(old)
        self.gone.discard(new)
        self.replace_uses(old, new)

    def bypass(self, node: onnx.NodeProto, data_position: int) -> None:
        self.replace_uses(node.output[0], node.input[data_position])
        self.remove(node)

    def set_attribute(self, node: onnx.NodeProto, name: str, value) -> None:
        self._save(node)
        for position, attr in enumerate(node.attribute):
            if attr.name == name:
                del node.attribute[position]
                break
        node.attribute.append(helper.make_attribute(name, value))

    def remove(self, node: onnx.NodeProto) -> None:
        ix = self.index
        self._member(ix.removed, id(node))
        ix.removed.add(id(node))
        for name in node.input:
            if name:
                self._drop_use(name, node)
        for name in node.output:
            if name and ix.producers.get(name) is node:
                self._member(self.gone, name)
                self.gone.add(name)

    def insert_after(self, anchor: Optional[onnx.NodeProto], nodes: List[onnx.NodeProto]) -> None:
        ix = self.index
        for node in nodes:
            parent_key = self.key[id(anchor)] if anchor is not None else (-1,)
            self._entry(self._children, id(anchor))
            self._children[id(anchor)] += 1
            self._place(node, parent_key + (self._children[id(anchor)],))
            for name in node.input:
                if name:
                    self._entry(ix.consumers, name)
                    ix.consumers[name].append(node)
            for name in node.output:
                if name:
                    self._entry(ix.producers, name)
                    self._member(self.gone, name)
                    ix.producers[name] = node
                    self.gone.discard(name)
            anchor = node

    def _check_no_dangling_reads(self, journal: Journal) -> None:
        """Every tensor this edit stopped producing must be read by nothing and be no graph output: a rule that
        removes a node and forgets one of its readers (a Shape node, a subgraph) would leave an invalid graph."""
        ix = self.index
        for name in [key[1] for key in journal.saved if key[0] == id(self.gone) and key[1] in self.gone]:
            if ix.producer(name) is None and (ix.users(name) or ix.is_graph_output(name)):
                readers = ", ".join(sorted({node_label(user) for user in ix.users(name)})) or "the graph outputs"
                raise RuntimeError(f"the edit removes {name!r}, which {readers} still read(s)")

    # --- helpers -------------------------------------------------------------------------------------------

    def _place(self, node: onnx.NodeProto, key: tuple) -> None:
        self._entry(self.key, id(node))
        self._length(self.inserted)
        self.key[id(node)] = key
        self.inserted.append(node)

    def _drop_use(self, name: str, node: onnx.NodeProto) -> None:
        """Forget one use of `name` by `node` (a node may read the same tensor twice)."""
        self._member(self.touched, name)
        self.touched.add(name)
        self._entry(self.index.consumers, name)
        users = self.index.consumers.get(name, [])
        for position, user in enumerate(users):
            if user is node:
                del users[position]
                return

    def _drop_all_uses(self, name: str, node: onnx.NodeProto) -> None:
        self._member(self.touched, name)
        self.touched.add(name)
        self._entry(self.index.consumers, name)
        users = self.index.consumers.get(name)
        if users:
            users[:] = [user for user in users if user is not node]

    # --- writing back --------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Write the edits back to the graph, in time linear in its size (n log n for the reorder)."""
        ix = self.index
        self._remove_dead_constants()
        graph = ix.graph
        if ix.removed or self.inserted:
            self._reorder_nodes()
        dead = self._dead_initializers()
        _keep_where(graph.initializer, lambda tensor: tensor.name not in dead)
        if dead:
            # Below IR 4 every initializer is an input; from IR 4 on only --fold-input-initializers lets one die.
            _keep_where(graph.input, lambda value: value.name not in dead)
        stale = self.gone | dead
        if stale:
            _keep_where(graph.value_info, lambda value: value.name not in stale)

    def _reorder_nodes(self) -> None:
        ix, graph = self.index, self.index.graph
        keys = {id(node): self.key[id(node)] for node in ix.nodes if id(node) not in ix.removed}
        copies = []  # held, so the wrappers' ids stay unique and valid during the sort
        for node in self.inserted:
            if id(node) in ix.removed:
                continue
            copies.append(graph.node.add())
            copies[-1].CopyFrom(node)
            keys[id(copies[-1])] = self.key[id(node)]
        live = len(keys)
        end = (float("inf"),)
        graph.node.sort(key=lambda node: keys.get(id(node), end))
        del graph.node[live:]

    def _remove_dead_constants(self) -> None:
        """Remove constant-producing nodes that folding left without a reader (a worklist, linear).

        Only constants whose readers a fold changed are candidates: whatever else the user put in the model stays,
        used or not.
        """
        ix = self.index
        pending = list(self.touched)
        while pending:
            name = pending.pop()
            node = ix.producer(name)
            if node is None or node.op_type not in CONSTANT_OPS or ix.is_removed(node):
                continue
            if any(ix.users(output) or ix.is_graph_output(output) for output in node.output if output):
                continue
            if any(True for _ in subgraphs(node)) or not self._only_constants(node):
                continue
            self.remove(node)
            pending.extend(input_name for input_name in node.input if input_name)

    def _only_constants(self, node: onnx.NodeProto) -> bool:
        """A dead node is removable when it depends on constants only (never on a graph input's data)."""
        try:
            for name in node.output:
                if name:
                    self.index.constant(name)
        except NotConstant:
            return False
        return True

    def _dead_initializers(self) -> Set[str]:
        """Initializers a fold touched that nothing reads any more. From IR 4 on, ones that are also graph inputs
        stay (a user-facing input with a default), unless --fold-input-initializers made them constants of the main
        graph: then they go, input and all (a subgraph's inputs are its caller's interface and always stay)."""
        ix = self.index
        input_constants = ix.model.fold_input_initializers and ix.parent is None and not ix.function
        return {
            name for name in self.touched
            if name in ix.initializers and not ix.users(name) and not ix.is_graph_output(name)
            and not (name in ix.input_names and ix.model.ir_version >= 4 and not input_constants)
        }


def _keep_where(repeated, predicate) -> None:
    """Keep the elements of a protobuf repeated field that match, in order, in one pass (no per-element delete)."""
    items = list(repeated)  # held, so the wrappers' ids stay valid during the sort
    flags = [bool(predicate(item)) for item in items]
    if all(flags):
        return
    order = {id(item): (not flag, position) for position, (item, flag) in enumerate(zip(items, flags))}
    repeated.sort(key=lambda item: order[id(item)])
    del repeated[sum(flags):]
