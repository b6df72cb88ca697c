"""Fold output is byte-identical to what bnfold produced before the rule-protocol refactor (commit e60b3e6), for
every model under models/ and several option sets: the refactor moved code, not behaviour.

The hashes in fold_output_hashes.json were recorded by folding with the code at e60b3e6. A model whose output
changes on purpose is listed in CHANGED with the reason, and its new hash replaces the old one in the file.
"""

import hashlib
import json
from pathlib import Path

import onnx
import pytest

import bnfold

ROOT = Path(__file__).resolve().parents[1]
HASHES = json.loads((Path(__file__).with_name("fold_output_hashes.json")).read_text())
OPTIONS = {"default": {}, "standalone": {"standalone": True}, "fii": {"fold_input_initializers": True},
           "inline": {"inline_functions": True}, "nocheck": {"local_check": False}}
MODELS = sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("models/**/*.onnx"))
# Outputs that changed on purpose since e60b3e6, and why (their hashes in the file are the new ones).
CHANGED = {
    "models/fixtures/exporter_initializer_inputs.onnx": "an old export's initializer inputs fold by default "
                                                        "(issue 24): every option set but fii, which folded before",
    "models/zoo/centerface_style_initializer_inputs.onnx": "new model (issue 24), recorded when added",
    "models/zoo/densenet_block.onnx": "its final BN folds forward through the transition AveragePool (issue 24)",
    **{f"models/zoo/{name}.onnx": "new model (issue 24 section 2), recorded when added"
       for name in ("repmixer_style", "pooled_head_style", "preact_sum_style", "split_norm_style",
                    "token_norm_style", "botnet_style")},
}


def test_every_shipped_model_has_a_recorded_hash():
    assert MODELS and set(MODELS) == set(HASHES["default"])
    assert set(CHANGED) <= set(MODELS)


def _folded_hash(model: str, options: dict) -> str:
    folded, _ = bnfold.fold(onnx.load(str(ROOT / model)), **options)
    return hashlib.sha256(folded.SerializeToString()).hexdigest()


@pytest.mark.parametrize("model", MODELS)
def test_fold_output_is_unchanged(model):
    """Without the local check (it runs ONNX Runtime and changes output only when a fold fails it): fast."""
    assert _folded_hash(model, OPTIONS["nocheck"]) == HASHES["nocheck"][model]


@pytest.mark.slow
@pytest.mark.parametrize("option", [name for name in OPTIONS if name != "nocheck"])
def test_fold_output_is_unchanged_under_options(option):
    changed = [model for model in MODELS if _folded_hash(model, OPTIONS[option]) != HASHES[option][model]]
    assert changed == []
