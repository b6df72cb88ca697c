"""Issue 24's folds on PyTorch exports (both exporters): each models/zoo_folds.py block exports with every BN, folds
with none kept (or only the ones named), matches PyTorch, and its report names the pattern."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bnfold.checking.run import run_model  # noqa: E402 - after the torch check
from bnfold.exporting import EXPORTERS, export  # noqa: E402
from models import zoo  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]  # PyTorch exports: CI, not the fast loop

# name -> (ops that must be gone after folding, the rule or look-through op each report must name)
CASES = {
    "repmixer_style": ({"BatchNormalization", "Sub", "Mul", "Add"}, "minus identity through BatchNormalization"),
    "pooled_head_style": ({"BatchNormalization"}, "through AveragePool"),
    "preact_sum_style": ({"BatchNormalization"}, "into Conv+Conv"),
    "split_norm_style": ({"BatchNormalization"}, "through Split [split_forward"),
    "token_norm_style": ({"BatchNormalization"}, "[backward_tree"),
    "botnet_style": ({"BatchNormalization"}, "Softmax, MatMul, Transpose, Reshape, AveragePool [attention"),
}


def _input(name: str, seed: int = 0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(zoo.INPUT_SHAPES[name]).astype(np.float32))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_new_pattern_folds_every_bn_and_matches_torch(name, exporter, tmp_path):
    module = zoo.FACTORIES[name]()
    result = export(module, _input(name), tmp_path / f"{name}.onnx", fold=True, exporter=exporter)
    assert result.passed, result.render()
    report = result.fold_report
    assert report.kept == [] and report.folded_count == result.bn_nodes > 0, report.render(verbose=True)
    gone, named = CASES[name]
    ops = {node.op_type for node in result.model.graph.node}
    assert not gone & ops, ops
    assert named in report.render(verbose=True)
    # every fold went through the local check (run on its own in ONNX Runtime) and passed it
    checked = [d for d in report.decisions if d.rule != "merge_branches"] + list(report.merges)
    assert all(fold.local_error is not None and fold.local_error < 1e-4 for fold in checked), checked
    x = _input(name, seed=1)
    (output,) = run_model(result.model, {result.model.graph.input[0].name: x.numpy()}).values()
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)
