"""The graph layer: node helpers (nodes, a leaf), a scoped index over each graph (index), its compile-time
constants (constants), per-scope tensor types (types), the typed edit operations folds are made of (edits), and
what one fold replaced (pieces)."""

from .constants import CONSTANT_OPS, ConstantBudget
from .editor import Editor
from .edits import Edit
from .index import GraphIndex, ModelScope, all_names, default_opset, outer_scope_uses, validate_node
from .nodes import DEFAULT_DOMAINS, AttributeReference, NotConstant, attribute, is_op, node_label, subgraphs
from .pieces import Piece, PieceInput
from .types import NUMPY_ELEMENT_TYPES, ScopeTypes, function_types, scope_types

__all__ = ["CONSTANT_OPS", "ConstantBudget", "DEFAULT_DOMAINS", "AttributeReference", "Edit", "Editor",
           "GraphIndex", "ModelScope", "NUMPY_ELEMENT_TYPES", "NotConstant", "Piece", "PieceInput", "ScopeTypes",
           "all_names", "attribute", "default_opset", "function_types", "is_op", "node_label", "outer_scope_uses",
           "scope_types", "subgraphs", "validate_node"]
