"""Topological order of a graph's nodes.

ONNX requires each node to come after the producers of what it reads; onnx.checker refuses a graph that breaks
this, though ONNX Runtime sorts and runs it (some converters and hand-edited graphs write nodes out of order).
bnfold sorts such graphs first: stably (the given order is kept wherever it is already valid) and only when needed,
in subgraphs and function bodies too, where names from enclosing scopes count as available. A cycle cannot be
sorted and stays an error.
"""

from __future__ import annotations

import heapq
from typing import Dict, List, Optional, Sequence, Set

import onnx

from ..errors import InvalidModelError
from .nodes import node_label, subgraphs


def free_names(graph: onnx.GraphProto) -> Set[str]:
    """Names a (sub)graph reads without defining them anywhere in it, whatever its node order."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: Set[str] = {v.name for v in graph.output}
    for node in graph.node:
        used.update(name for name in node.input if name)
        for sub in subgraphs(node):
            used |= free_names(sub)
        defined.update(node.output)
    return used - defined


def _reads(node: onnx.NodeProto) -> List[str]:
    """What a node needs before it runs: its inputs and what its subgraphs read from enclosing scopes."""
    names = [name for name in node.input if name]
    for sub in subgraphs(node):
        names.extend(free_names(sub))
    return names


def topological_order(nodes: Sequence[onnx.NodeProto]) -> Optional[List[int]]:
    """The positions of `nodes` in a valid order, or None when the given order is already valid.

    Stable: among the nodes whose inputs are ready, the earliest given one goes first, so the given order is kept
    wherever it is valid. A name no node here produces (a graph input, an initializer, an outer-scope name) is
    available from the start. Raises InvalidModelError, naming the nodes of one cycle, when there is a cycle.
    """
    producer: Dict[str, int] = {}
    for position, node in enumerate(nodes):
        for name in node.output:
            if name:
                producer.setdefault(name, position)
    needs = [sorted({producer[name] for name in _reads(node) if name in producer}) for node in nodes]
    if all(dependency < position for position, wanted in enumerate(needs) for dependency in wanted):
        return None
    readers: List[List[int]] = [[] for _ in nodes]
    waiting = [len(wanted) for wanted in needs]
    for position, wanted in enumerate(needs):
        for dependency in wanted:
            readers[dependency].append(position)
    ready = [position for position, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: List[int] = []
    while ready:
        position = heapq.heappop(ready)
        order.append(position)
        for reader in readers[position]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) < len(nodes):
        raise InvalidModelError(f"the graph has a cycle: {_cycle(nodes, needs, set(order))}")
    return order


def _cycle(nodes: Sequence[onnx.NodeProto], needs: List[List[int]], placed: Set[int]) -> str:
    """'a -> b -> a': one cycle among the nodes the sort could not place (each waits on another unplaced node)."""
    position = min(set(range(len(nodes))) - placed)
    seen: Dict[int, int] = {}
    path: List[int] = []
    while position not in seen:
        seen[position] = len(path)
        path.append(position)
        position = next(dependency for dependency in needs[position] if dependency not in placed)
    loop = path[seen[position]:] + [position]
    return " -> ".join(f"{nodes[p].op_type} node {node_label(nodes[p])!r}" for p in reversed(loop))


def _sort_graph(nodes, path: str, sorted_paths: List[str]) -> None:
    """Sort one repeated field of nodes in place when needed, then each subgraph of its nodes."""
    order = topological_order(nodes)
    if order is not None:
        held = list(nodes)  # held, so the wrappers' ids stay unique and valid during the sort
        rank = {id(held[position]): rank for rank, position in enumerate(order)}
        nodes.sort(key=lambda node: rank[id(node)])
        sorted_paths.append(path)
    for node in nodes:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for number, body in enumerate(bodies):
                suffix = f"[{number}]" if len(bodies) > 1 else ""
                _sort_graph(body.node, f"{path}/{node_label(node)}.{attr.name}{suffix}", sorted_paths)


def sort_nodes(model: onnx.ModelProto) -> List[str]:
    """Put the nodes of every graph of `model` (main graph, subgraphs, function bodies) in topological order, in
    place and only where they are not; return the paths of the graphs sorted (empty when none needed it)."""
    sorted_paths: List[str] = []
    _sort_graph(model.graph.node, "main", sorted_paths)
    for function in model.functions:
        _sort_graph(function.node, f"function {function.domain}.{function.name}", sorted_paths)
    return sorted_paths
