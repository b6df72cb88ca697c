"""Node helpers every graph module shares (a leaf: it imports no other bnfold module): the default domains, an
op test, attribute reads, labels for messages, the subgraphs of a node, and the NotConstant refusal."""

from __future__ import annotations

from typing import Optional

import onnx
from onnx import helper

DEFAULT_DOMAINS = ("", "ai.onnx")


class NotConstant(Exception):
    """A tensor is not a compile-time constant bnfold may use; str() says why, for the report."""


class AttributeReference(NotConstant):
    """An attribute inside a function body refers to a function attribute, which each call site sets."""


def is_op(node: Optional[onnx.NodeProto], op_types) -> bool:
    """Whether `node` exists and is one of `op_types` from the default ONNX domain."""
    return node is not None and node.op_type in op_types and node.domain in DEFAULT_DOMAINS


def attribute(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value; AttributeReference when a function body leaves it to the call site."""
    for attr in node.attribute:
        if attr.name == name:
            if attr.ref_attr_name:
                raise AttributeReference(
                    f"{node.op_type} node {node_label(node)!r} takes attribute {name!r} from function attribute "
                    f"{attr.ref_attr_name!r}, set per call site (--inline-functions folds per call site)")
            return helper.get_attribute_value(attr)
    return default


def node_label(node: onnx.NodeProto) -> str:
    """A name for messages: the node name, else its op type and first output."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


def subgraphs(node: onnx.NodeProto):
    """The bodies of an If / Loop / Scan node (any GRAPH or GRAPHS attribute)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs
