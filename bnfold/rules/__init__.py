"""The folding rules, in the order the driver tries them.

Each module declares NAME, DESCRIPTION, ANCHORS (the op types it is offered: BN_ANCHORS for rules that fold a
BatchNormalization node) and match(subject, ctx) -> Rewrite | None, raising Refuse(reason) when it recognises its
pattern but cannot fold it exactly. BN rules receive a rules.base.BatchNorm; other rules the anchor NodeProto.
Adding a pattern means adding a module here and its tests.
"""

from .base import BN_ANCHORS
from . import add_bias, backward, conv, conv_transpose, decomposed, gemm, matmul, standalone, through_reshape

# Producer rules first, then the same fold across a Reshape/Flatten/Identity, into the consumers, decomposed BNs
# (anchored on Mul/Add/Sub/Div), and the Mul + Add fallback for a BN that nothing else can absorb.
REGISTRY = (conv, conv_transpose, gemm, matmul, add_bias, through_reshape, backward, decomposed, standalone)
RULE_NAMES = tuple(rule.NAME for rule in REGISTRY)

__all__ = ["BN_ANCHORS", "REGISTRY", "RULE_NAMES"]
