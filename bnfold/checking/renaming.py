"""Prefixing every tensor and node name of copied nodes, so several pieces (or both sides of one) share a model."""

from __future__ import annotations

from itertools import chain

import onnx


def prefixed(node: onnx.NodeProto, prefix: str) -> onnx.NodeProto:
    """A copy of `node` with every tensor and node name prefixed, subgraphs included, so pieces cannot collide."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    _prefix_node(copy, prefix)
    return copy


def _prefix_node(node: onnx.NodeProto, prefix: str) -> None:
    for names in (node.input, node.output):
        renamed = [prefix + name if name else name for name in names]
        del names[:]
        names.extend(renamed)
    if node.name:
        node.name = prefix + node.name
    for attribute in node.attribute:
        if attribute.HasField("g"):
            _prefix_graph(attribute.g, prefix)
        for graph in attribute.graphs:
            _prefix_graph(graph, prefix)


def _prefix_graph(graph: onnx.GraphProto, prefix: str) -> None:
    for value in chain(graph.input, graph.output, graph.value_info):
        value.name = prefix + value.name
    for tensor in graph.initializer:
        tensor.name = prefix + tensor.name
    for sparse in graph.sparse_initializer:
        sparse.values.name = prefix + sparse.values.name
    for node in graph.node:
        _prefix_node(node, prefix)
