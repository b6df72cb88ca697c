"""The folding rules, in the order the driver tries them. Each module declares NAME, DESCRIPTION and
match(bn, ctx) -> Rewrite | None, raising Refuse(reason) when it recognises its pattern but cannot fold it exactly.
Adding a pattern means adding a module here and its tests."""

from . import add_bias, conv, conv_transpose, gemm, matmul

REGISTRY = (conv, conv_transpose, gemm, matmul, add_bias)
RULE_NAMES = tuple(rule.NAME for rule in REGISTRY)
