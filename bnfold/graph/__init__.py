"""The graph layer: a scoped index over each graph (index), its compile-time constants (constants), per-scope
tensor types (types), the edit operations folds are made of (edits), and what one fold replaced (pieces)."""

from .constants import CONSTANT_OPS, ConstantBudget
from .edits import Edit, Editor
from .index import (DEFAULT_DOMAINS, AttributeReference, GraphIndex, ModelScope, NotConstant, all_names, attribute,
                    default_opset, is_op, node_label, outer_scope_uses, subgraphs, validate_node)
from .pieces import Piece, PieceInput
from .types import NUMPY_ELEMENT_TYPES, ScopeTypes, function_types, scope_types

__all__ = ["CONSTANT_OPS", "ConstantBudget", "DEFAULT_DOMAINS", "AttributeReference", "Edit", "Editor",
           "GraphIndex", "ModelScope", "NUMPY_ELEMENT_TYPES", "NotConstant", "Piece", "PieceInput", "ScopeTypes",
           "all_names", "attribute", "default_opset", "function_types", "is_op", "node_label", "outer_scope_uses",
           "scope_types", "subgraphs", "validate_node"]
