"""The folding rules, in the order the driver tries them.

Each module declares NAME, DESCRIPTION, ANCHORS (the op types it is offered: BN_ANCHORS for rules that fold a
BatchNormalization node) and match(subject, ctx) -> Rewrite | None, raising Refuse(reason) when it recognises its
pattern but cannot fold it exactly. BN rules receive a rules.base.BatchNorm; other rules the anchor NodeProto.
Adding a pattern means adding a module here and its tests.
"""

from .base import BN_ANCHORS
from . import add_bias, conv, conv_transpose, gemm, matmul

REGISTRY = (conv, conv_transpose, gemm, matmul, add_bias)
RULE_NAMES = tuple(rule.NAME for rule in REGISTRY)
