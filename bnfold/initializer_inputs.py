"""Initializers listed as graph inputs: old PyTorch exporters' default (keep_initializers_as_inputs).

From IR 4 on, an initializer that is also a graph input is a default the caller may override. When nearly every
initializer of a model is one, that is the exporter's habit rather than a wish for overridable weights (nobody
overrides BN statistics at inference time): bnfold treats them as constants by default, removes the ones the fold
leaves unread from the inputs, and says so once. keep_input_initializers (--keep-input-initializers) keeps them
overridable; fold_input_initializers (--fold-input-initializers) treats them as constants below that share too.
"""

from __future__ import annotations

from typing import List, Optional

import onnx

from .graph.constants import INITIALIZER_INPUT
from .report import BnDecision, InitializerInputs

# The share of initializers that are also graph inputs from which a model is taken for an exporter's artifact.
ARTIFACT_SHARE = 0.9


def survey(model: onnx.ModelProto, *, fold_input_initializers: bool = False,
           keep_input_initializers: bool = False) -> Optional[InitializerInputs]:
    """The model (before the fold) as the report describes it when its initializers are nearly all graph inputs,
    with whether they are folded as constants and what decided it; None for other models, and below IR 4, where
    such initializers are constants anyway."""
    if model.ir_version < 4:
        return None
    names = [tensor.name for tensor in model.graph.initializer]
    inputs = {value.name for value in model.graph.input}
    listed = sum(name in inputs for name in names)
    if not names or listed < ARTIFACT_SHARE * len(names):
        return None
    decided_by = ("keep_input_initializers" if keep_input_initializers else
                  "fold_input_initializers" if fold_input_initializers else "default")
    return InitializerInputs(initializers=len(names), listed_as_inputs=listed,
                             folded_as_constants=not keep_input_initializers, decided_by=decided_by)


def as_constants(info: Optional[InitializerInputs], fold_input_initializers: bool) -> bool:
    """Whether the fold treats initializer inputs as constants: asked for, or the exporter's signature is clear."""
    return fold_input_initializers or (info is not None and info.folded_as_constants)


def kept_for_them(decisions: List[BnDecision]) -> int:
    """BNs kept because a weight or statistic they need is an initializer that is also a graph input."""
    return sum(not decision.folded and INITIALIZER_INPUT in (decision.reason or "") for decision in decisions)


def removed_inputs(names_before: List[str], after: onnx.ModelProto) -> List[str]:
    """The graph inputs of `names_before` that `after` no longer lists (initializers the fold left unread)."""
    remaining = {value.name for value in after.graph.input}
    return [name for name in names_before if name not in remaining]
