"""Initializers listed as graph inputs (old PyTorch exporters' keep_initializers_as_inputs): folded as constants by
default when nearly all initializers are inputs, the unread ones removed from the inputs and the count said in one
line; keep_input_initializers (--keep-input-initializers) restores overridable inputs; fold_input_initializers
(--fold-input-initializers) forces the fold below that share. fold, fold_file, fold_files, check and bench --fold
take the same options."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

import bnfold
from bnfold.cli import cli
from bnfold.errors import UsageError
from models import fixtures
from support import assert_same_outputs, fold_and_compare, run

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "models" / "fixtures" / "exporter_initializer_inputs.onnx"
TORCH_EXPORT = ROOT / "models" / "zoo" / "centerface_style_initializer_inputs.onnx"
FAST_BENCH = dict(warmup=0, iterations=1, intra_op_threads=1, opt_levels=("disable",))


def input_names(model):
    return [value.name for value in model.graph.input]


def bn_parameter_names(model):
    return [name for node in model.graph.node if node.op_type == "BatchNormalization" for name in node.input[1:5]]


def unread_after_fold(model):
    """What a fold of every BN into its Conv leaves unread: the BN parameters and the Conv weights it replaces."""
    conv_weights = [node.input[1] for node in model.graph.node if node.op_type == "Conv"]
    return set(bn_parameter_names(model)) | set(conv_weights)


def few_initializer_inputs():
    """A model with 1 of its initializers (one Conv's weight) a graph input: far below the exporter's signature."""
    model = fixtures.growing_activations_net(depth=3)
    first = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(first.name, first.data_type, list(first.dims)))
    return model


def test_by_default_an_old_export_folds_and_only_the_unread_initializer_inputs_go():
    model = fixtures.exporter_initializer_inputs()
    folded, report = fold_and_compare(model, expect_folded=4)
    unread = unread_after_fold(model)
    assert sorted(report.removed_inputs) == sorted(unread)
    # What remains: the image and the head's weights, which no fold touched, in their order.
    assert input_names(folded) == ["x", "fc_w", "fc_b"]
    assert not unread & {tensor.name for tensor in folded.graph.initializer}
    info = report.initializer_inputs
    assert (info.initializers, info.listed_as_inputs, info.folded_as_constants, info.decided_by, info.bn_kept,
            info.inputs_removed) == (22, 22, True, "default", 0, 20)
    lines = [line for line in report.render().splitlines() if "graph input" in line]
    assert lines == ["22 of 22 initializers are also graph inputs (an old exporter's keep_initializers_as_inputs): "
                     "folded as constants; 20 graph inputs removed (the unread ones; --keep-input-initializers "
                     "keeps them as overridable inputs)"]
    assert report.to_dict()["removed_inputs"] == report.removed_inputs


def test_keep_input_initializers_restores_overridable_inputs_and_says_why_once():
    model = fixtures.exporter_initializer_inputs()
    folded, report = bnfold.fold(model, keep_input_initializers=True)
    assert report.kept_count == 4 and report.folded_count == 0 and report.removed_inputs == []
    assert folded.SerializeToString() == model.SerializeToString()
    info = report.initializer_inputs
    assert (info.folded_as_constants, info.decided_by, info.bn_kept) == (False, "keep_input_initializers", 4)
    text = report.render()
    assert text.count("kept as overridable inputs (--keep-input-initializers), 4 BN kept because of it") == 1
    # An input overridden at run time still changes the output: the interface is what it was.
    feeds = {"x": np.ones((1, 3, 12, 12), np.float32), "l0_scale": np.zeros(16, np.float32)}
    assert not np.allclose(run(folded, feeds)["logits"], run(folded, {"x": feeds["x"]})["logits"])


def test_the_flag_still_forces_the_fold_below_the_signature_share():
    model = few_initializer_inputs()
    _, report = bnfold.fold(model)
    assert report.initializer_inputs is None and "initializers are also graph inputs" not in report.render()
    assert report.kept_count == 1  # the BN after that Conv, with today's reason
    assert "pass --fold-input-initializers" in report.kept[0].reason
    folded, report = fold_and_compare(model, expect_folded=report.folded_count + 1, fold_input_initializers=True)
    assert report.removed_inputs == [model.graph.initializer[0].name]
    assert "graph inputs removed: 1" in report.render()


def test_the_flag_above_the_share_is_said_as_the_flag():
    model = fixtures.exporter_initializer_inputs()
    _, report = fold_and_compare(model, expect_folded=4, fold_input_initializers=True)
    assert report.initializer_inputs.decided_by == "fold_input_initializers"
    assert "folded as constants (--fold-input-initializers); 20 graph inputs removed" in report.render()


def test_both_flags_are_a_usage_error():
    with pytest.raises(UsageError, match="contradict"):
        bnfold.fold(fixtures.exporter_initializer_inputs(), fold_input_initializers=True,
                    keep_input_initializers=True)
    result = CliRunner().invoke(cli, [str(FIXTURE), "--dry-run", "--fold-input-initializers",
                                      "--keep-input-initializers"])
    assert result.exit_code == 2 and result.output.count("bnfold: error:") == 1 and "contradict" in result.output


def test_an_initializer_input_still_read_stays_and_user_inputs_never_change():
    # Two Convs share W; only the first has a BN: W is copied, and stays (an input still read by the second Conv).
    model = fixtures.shared_weight_convs()
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert "W" in input_names(folded) and "W" in {t.name for t in folded.graph.initializer}
    assert sorted(report.removed_inputs) == sorted(bn_parameter_names(model))
    assert input_names(folded) == [name for name in input_names(model) if name not in report.removed_inputs]


def test_below_ir4_initializer_inputs_are_constants_and_no_artifact_is_reported():
    model = fixtures.initializer_as_input(ir_version=3)
    model.opset_import[0].version = 8
    folded, report = fold_and_compare(model, expect_folded=1, keep_input_initializers=True)
    assert report.initializer_inputs is None
    # Below IR 4 the unread initializer inputs go whatever the options: they were constants all along. Here the
    # fold replaced them all (W and B by new tensors, the BN parameters by nothing).
    assert report.removed_inputs == [tensor.name for tensor in model.graph.initializer]
    assert "graph inputs removed: 6" in report.render()


def test_written_file_is_no_larger_than_the_original(tmp_path):
    original_size = FIXTURE.stat().st_size
    model = onnx.load(FIXTURE)
    bn_bytes = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer
                   if t.name in set(bn_parameter_names(model)))
    report = bnfold.fold_file(FIXTURE, tmp_path / "folded.onnx")
    assert report.verification.passed and report.folded_count == 4
    folded_size = (tmp_path / "folded.onnx").stat().st_size
    assert folded_size <= original_size
    # The weights keep their size; each Conv gains a bias of its channel count; the BN statistics go.
    new_biases = 4 * 16 * 4
    assert report.initializer_bytes_after == report.initializer_bytes_before - bn_bytes + new_biases
    assert abs(folded_size - (original_size - bn_bytes)) < 0.05 * original_size
    assert_same_outputs(model, onnx.load(tmp_path / "folded.onnx"))
    kept = bnfold.fold_file(FIXTURE, tmp_path / "kept.onnx", keep_input_initializers=True)
    assert not kept.changed and input_names(onnx.load(tmp_path / "kept.onnx")) == input_names(model)


def test_cli_says_it_in_one_line_and_in_json():
    result = CliRunner().invoke(cli, [str(FIXTURE), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if "graph inputs" in line] == [
        "22 of 22 initializers are also graph inputs (an old exporter's keep_initializers_as_inputs): folded as "
        "constants; 20 graph inputs removed (the unread ones; --keep-input-initializers keeps them as overridable "
        "inputs)"]
    assert "PASSED" in result.output
    data = json.loads(CliRunner().invoke(cli, [str(FIXTURE), "--dry-run", "--json", "--no-verify"]).output)
    assert data["bn_folded"] == 4 and len(data["removed_inputs"]) == 20
    assert data["initializer_inputs"] == {"initializers": 22, "listed_as_inputs": 22, "folded_as_constants": True,
                                          "decided_by": "default", "bn_kept": 0, "inputs_removed": 20}
    kept = CliRunner().invoke(cli, [str(FIXTURE), "--dry-run", "--no-verify", "--keep-input-initializers"])
    assert kept.exit_code == 0 and "0 of 4 folded" in kept.output
    assert kept.output.count("(--keep-input-initializers), 4 BN kept because of it") == 1


def test_fold_files_takes_the_option(tmp_path):
    result = bnfold.fold_files([FIXTURE], tmp_path, jobs=1, keep_input_initializers=True, verify=False)
    assert result.models[0].report.kept_count == 4
    result = bnfold.fold_files([FIXTURE], tmp_path, jobs=1, overwrite=True)
    assert result.models[0].report.folded_count == 4 and result.models[0].verdict == "PASSED"


def test_check_counts_them_foldable_unless_kept():
    result = bnfold.check(FIXTURE)
    assert len(result.foldable) == 4 and result.kept == [] and result.exit_code == 1
    assert any("folded as constants; 20 graph inputs removed" in note for note in result.notes)
    kept = bnfold.check(FIXTURE, keep_input_initializers=True)
    assert len(kept.kept) == 4 and kept.foldable == [] and kept.exit_code == 0
    cli_result = CliRunner().invoke(cli, ["check", str(FIXTURE)])
    assert cli_result.exit_code == 1 and "4 BN foldable into weights, 0 only as Mul+Add, 0 kept: FAIL" in \
        cli_result.output
    cli_result = CliRunner().invoke(cli, ["check", str(FIXTURE), "--keep-input-initializers"])
    assert cli_result.exit_code == 0 and "0 BN foldable into weights, 0 only as Mul+Add, 4 kept: ok" in \
        cli_result.output


def test_bench_fold_folds_with_the_fold_options_and_says_when_nothing_folded():
    result = bnfold.bench(FIXTURE, fold=True, **FAST_BENCH)
    assert result.models == [FIXTURE.name, "folded"] and result.fold_report.folded_count == 4
    assert "folded in memory: 4 of 4 BN folded, 0 kept; 20 unread initializer inputs removed" in result.table()
    assert result.to_dict()["fold"]["bn_folded"] == 4
    kept = bnfold.bench(FIXTURE, fold=True, fold_options={"keep_input_initializers": True}, **FAST_BENCH)
    assert kept.fold_report.kept_count == 4 and not kept.fold_report.changed
    assert "folded in memory: nothing was folded (4 BN kept" in kept.table()
    with pytest.raises(UsageError, match="fold=True"):
        bnfold.bench(FIXTURE, fold_options={"keep_input_initializers": True}, **FAST_BENCH)
    with pytest.raises(UsageError, match="unknown option"):
        bnfold.bench(FIXTURE, fold=True, fold_options={"verify": True}, **FAST_BENCH)


def test_bench_cli_passes_the_fold_options():
    fast = ["--warmup", "0", "--iterations", "1", "--intra-op-threads", "1", "--ort-opt-level", "disable"]
    result = CliRunner().invoke(cli, ["bench", str(FIXTURE), "--fold", "--keep-input-initializers", *fast])
    assert result.exit_code == 0, result.output
    assert "nothing was folded (4 BN kept" in result.output
    result = CliRunner().invoke(cli, ["bench", str(FIXTURE), "--fold", *fast])
    assert "4 of 4 BN folded" in result.output and "nothing was folded" not in result.output
    result = CliRunner().invoke(cli, ["bench", str(FIXTURE), "--keep-input-initializers", *fast])
    assert result.exit_code == 2 and "apply to --fold only" in result.output


def test_a_torchscript_export_with_initializer_inputs_folds_by_default_and_matches(tmp_path):
    """models/zoo/centerface_style_initializer_inputs.onnx: PyTorch's torchscript exporter with
    keep_initializers_as_inputs=True (models/build_zoo.py)."""
    model = onnx.load(TORCH_EXPORT)
    names = {tensor.name for tensor in model.graph.initializer}
    assert model.ir_version >= 4 and names <= set(input_names(model))
    report = bnfold.fold_file(TORCH_EXPORT, tmp_path / "folded.onnx")
    assert report.verification.passed
    bn_count = sum(node.op_type == "BatchNormalization" for node in model.graph.node)
    assert report.folded_count == bn_count == 13 and report.initializer_inputs.decided_by == "default"
    folded = onnx.load(tmp_path / "folded.onnx")
    assert "BatchNormalization" not in {node.op_type for node in folded.graph.node}
    assert input_names(folded) == [name for name in input_names(model) if name not in report.removed_inputs]
    assert len(report.removed_inputs) == report.initializer_inputs.inputs_removed > 0
    assert_same_outputs(model, folded)


@pytest.mark.slow
@pytest.mark.torch
def test_the_stored_torch_export_is_the_current_zoo_module_and_its_fold_matches_pytorch(tmp_path):
    """What models/build_zoo.py writes today, exported afresh: same outputs as the stored file and the module; the
    default fold of the fresh export matches PyTorch too, at another batch and image size (dynamic dims)."""
    torch = pytest.importorskip("torch")
    from models.build_zoo import export_with_initializer_inputs
    from models.zoo import INITIALIZER_INPUT_EXPORTS

    factory, shape = INITIALIZER_INPUT_EXPORTS["centerface_style"]
    module = factory()
    example = torch.from_numpy(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
    export_with_initializer_inputs(module, example, tmp_path / "fresh.onnx")
    fresh, stored = onnx.load(tmp_path / "fresh.onnx"), onnx.load(TORCH_EXPORT)
    assert input_names(fresh) == input_names(stored)
    x = np.random.default_rng(2).standard_normal((2, 3, 48, 80)).astype(np.float32)
    with torch.no_grad():
        expected = [tensor.numpy() for tensor in module(torch.from_numpy(x))]
    folded, report = bnfold.fold(fresh)
    assert report.folded_count == 13 and report.kept_count == 0
    for model in (stored, fresh, folded):
        outputs = list(run(model, {"input": x}).values())
        for got, want in zip(outputs, expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
