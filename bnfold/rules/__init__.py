"""The folding rules and the tables they share.

- producers.py: the ops a BN folds into (Conv, ConvTranspose, Gemm, MatMul), forward and backward;
- chain.py: the look-through ops between a BN and those ops, and the walk through them;
- forward.py, backward.py, decomposed.py, standalone.py: the rules, tried by bnfold.engine in that order;
- merge_branches.py: parallel Conv / identity branches of one tensor summed by Add / Sum -> one Conv (RepVGG);
- affine.py, reparam.py: the fold and merge arithmetic, plain numpy in float64.

Adding an op a BN folds into is one entry in producers.PRODUCERS (and PRODUCER_RULES below, its --skip name);
adding a look-through op is one entry in chain.py's tables.
"""

from . import backward, decomposed, forward, merge_branches, standalone
from .producers import PRODUCERS

# --skip names of the producers: folding into that op is not done.
PRODUCER_RULES = {"Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "gemm", "MatMul": "matmul"}
assert set(PRODUCER_RULES) == set(PRODUCERS), "every producer needs a --skip name"

RULES = (forward, backward, decomposed, standalone, merge_branches)
RULE_NAMES = tuple(rule.NAME for rule in RULES) + tuple(PRODUCER_RULES.values())


def descriptions():
    """(name, description) of every rule and producer, in the order they are tried."""
    rows = [(rule.NAME, rule.DESCRIPTION) for rule in RULES]
    rows += [(name, f"folding into {op} (forward and backward)") for op, name in PRODUCER_RULES.items()]
    return rows


__all__ = ["PRODUCERS", "PRODUCER_RULES", "RULES", "RULE_NAMES", "descriptions"]
