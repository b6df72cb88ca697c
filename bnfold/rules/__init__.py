"""The folding rules and the tables they share.

- base.py: the Rule protocol (match a candidate node, plan an Edit, or Refuse with the reason) and what rules share;
- producers.py: the ops a BN folds into (Conv, ConvTranspose, Gemm, MatMul), forward and backward, one entry each;
- look_through.py: the ops between a BN and those ops, one entry each; chain.py: the one walk through them;
- forward.py, sum_forward.py, split_forward.py, attention.py, backward.py, backward_tree.py, standalone.py,
  merge_branches.py, decomposed.py: the rules, tried in RULES order;
- affine.py, reparam.py: the fold and merge arithmetic, plain numpy in float64.

Adding an op a BN folds into is one entry in producers.PRODUCERS (its --skip name included); adding a look-through
op is one entry in look_through.TABLE; adding a rule is one module implementing base.Rule, listed once below.
"""

from . import (attention, backward, backward_tree, decomposed, forward, merge_branches, split_forward, standalone,
               sum_forward)
from .producers import PRODUCERS

# The order rules are offered each candidate node: a BN goes to attention (first: its MatMul(Softmax, V) is one
# forward cannot fold, and its reasons are the specific ones), forward, sum_forward, split_forward, backward,
# backward_tree, then standalone (which only applies where the walk up reaches no producer); an Add / Sum / Sub to
# merge_branches, then decomposed.
RULES = (attention.RULE, forward.RULE, sum_forward.RULE, split_forward.RULE, backward.RULE, backward_tree.RULE,
         standalone.RULE, merge_branches.RULE, decomposed.RULE)
RULE_NAMES = tuple(rule.name for rule in RULES) + tuple(entry.skip_name for entry in PRODUCERS.values())


def descriptions():
    """(name, description) of every rule and producer, in the order they are tried."""
    rows = [(rule.name, rule.description) for rule in RULES]
    rows += [(entry.skip_name, f"folding into {op} (forward and backward)") for op, entry in PRODUCERS.items()]
    return rows


__all__ = ["PRODUCERS", "RULES", "RULE_NAMES", "descriptions"]
