"""The models/ zoo: every architecture exported with both exporters keeps every BN, folds, and matches PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bnfold.exporting import EXPORTERS, export  # noqa: E402 - after the torch check
from bnfold.loading import load_model  # noqa: E402
from bnfold.checking.run import run_model  # noqa: E402
from models import zoo  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]  # PyTorch exports: CI, not the fast loop
ZOO_FILES = Path(__file__).resolve().parent.parent / "models" / "zoo"


def example_input(name: str, batch: int = None, seed: int = 0):
    shape = list(zoo.INPUT_SHAPES[name])
    if batch is not None:
        shape[0] = batch
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def batchnorm_layers(module):
    return [layer for layer in module.modules() if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)]


def test_zoo_covers_the_issue_architectures():
    assert set(zoo.FACTORIES) == set(zoo.INPUT_SHAPES) == {
        "resnet_style", "mobilenet_style", "convtranspose_decoder", "mlp_bn1d", "audio_conv1d", "conv3d_net",
        "densenet_block", "two_branch", "repvgg_style", "mobileone_style", "mixconv_style", "token_mlp",
        "convmixer_head", "repmixer_style", "pooled_head_style",
        "preact_sum_style", "split_norm_style", "token_norm_style",
        "botnet_style",
    }


@pytest.mark.parametrize("name", sorted(zoo.FACTORIES))
def test_models_are_small_eval_and_have_nontrivial_batchnorm_statistics(name):
    module = zoo.FACTORIES[name]()
    assert not module.training
    parameter_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert parameter_bytes < 1_000_000
    layers = batchnorm_layers(module)
    assert layers
    for layer in layers:
        # An untrained BN (mean 0, var 1, gamma 1, beta 0) is nearly the identity: a fold of it proves nothing.
        assert layer.running_mean.abs().max() > 0.1
        assert (layer.running_var - 1).abs().max() > 0.1
        assert (layer.weight - 1).abs().max() > 0.1
        assert layer.bias.abs().max() > 0.1
    output = module(example_input(name))
    assert torch.isfinite(output).all() and output.std() > 1e-3


def test_factories_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, second = zoo.resnet_style(), zoo.resnet_style()
    assert torch.equal(torch.rand(3), expected)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(zoo.FACTORIES))
def test_round_trip_keeps_every_bn_folds_and_matches_torch_three_ways(name, exporter, tmp_path):
    module = zoo.FACTORIES[name]()
    path = tmp_path / f"{name}.onnx"
    result = export(module, example_input(name), path, fold=True, exporter=exporter)

    assert result.bn_nodes == result.bn_calls == len(batchnorm_layers(module))
    assert result.bn_folded_by_exporter == 0
    report = result.fold_report
    assert len(report.decisions) == result.bn_nodes
    for decision in report.decisions:
        assert decision.folded or decision.reason, decision
    assert report.folded_count >= 1
    assert set(result.comparisons) == {"torch vs onnx", "torch vs folded", "onnx vs folded"}
    assert result.passed, result.render()
    assert result.written and load_model(path).SerializeToString() == result.model.SerializeToString()


@pytest.mark.parametrize("name", sorted(zoo.FACTORIES))
def test_stored_zoo_files_keep_every_bn_and_match_the_current_zoo(name):
    """models/zoo/*.onnx are what models/build_zoo.py writes from models/zoo.py; rerun it if this fails."""
    model = load_model(ZOO_FILES / f"{name}.onnx")
    module = zoo.FACTORIES[name]()
    bn_nodes = sum(node.op_type == "BatchNormalization" for node in model.graph.node)
    assert bn_nodes == len(batchnorm_layers(module))
    x = example_input(name, batch=3, seed=1)
    (output,) = run_model(model, {model.graph.input[0].name: x.numpy()}).values()
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name, blocks", [("repvgg_style", 4), ("mobileone_style", 5)])
def test_reparameterizable_blocks_become_one_conv_each_and_match_torch(name, blocks, exporter, tmp_path):
    """The training structure (parallel Conv+BN branches and identity BNs) exported, folded and merged: one Conv
    per block, no BN or per-channel Mul / Add left, and the same outputs as the PyTorch module."""
    module = zoo.FACTORIES[name]()
    result = export(module, example_input(name), tmp_path / f"{name}.onnx", fold=True, exporter=exporter)
    assert result.passed, result.render()
    ops = [node.op_type for node in result.model.graph.node if node.op_type != "Constant"]
    assert ops.count("Conv") == blocks
    assert not {"BatchNormalization", "Mul", "Add", "Sum"} & set(ops), ops
    report = result.fold_report
    assert report.merges and all(merge.merged for merge in report.merges)
    x = example_input(name, seed=1)
    (output,) = run_model(result.model, {result.model.graph.input[0].name: x.numpy()}).values()
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["mixconv_style", "token_mlp", "convmixer_head"])
def test_concat_token_and_pooled_head_bns_all_fold_into_weights(name, exporter, tmp_path):
    """Issue 14's three new folds on real exports: Concat -> BN, tokens -> Reshape -> BatchNorm1d, BN -> pool ->
    Linear. Every BN ends in a weight (no Mul + Add, none kept) and the result matches PyTorch."""
    result = export(zoo.FACTORIES[name](), example_input(name), tmp_path / f"{name}.onnx", fold=True,
                    exporter=exporter)
    report = result.fold_report
    assert report.kept == [] and len(report.into_weights) == len(report.decisions) == result.bn_nodes
    assert result.passed, result.render()
