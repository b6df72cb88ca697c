"""Initializers listed as graph inputs (old PyTorch exporters' default): said once in the report, and with
--fold-input-initializers folded, the inputs the fold left unread removed so the file does not grow."""

import json
from pathlib import Path

import onnx
from click.testing import CliRunner
from onnx import helper, numpy_helper

import bnfold
from bnfold.cli import cli
from models import fixtures
from support import assert_same_outputs, fold_and_compare

FIXTURE = Path(__file__).resolve().parents[1] / "models" / "fixtures" / "exporter_initializer_inputs.onnx"


def input_names(model):
    return [value.name for value in model.graph.input]


def bn_parameter_names(model):
    return [name for node in model.graph.node if node.op_type == "BatchNormalization" for name in node.input[1:5]]


def test_without_the_flag_the_cause_is_said_once_with_the_number_of_bns_it_keeps():
    model = fixtures.exporter_initializer_inputs()
    folded, report = bnfold.fold(model)
    assert report.kept_count == 4
    info = report.initializer_inputs
    assert (info.initializers, info.listed_as_inputs, info.bn_kept, info.folded_as_constants) == (22, 22, 4, False)
    text = report.render()
    assert text.count("--fold-input-initializers to fold them as constants") == 1
    assert "22 of 22 initializers are also graph inputs" in text and "4 BN kept because of it" in text
    assert report.to_dict()["initializer_inputs"]["bn_kept"] == 4
    assert input_names(folded) == input_names(model) and report.removed_inputs == []


def test_with_the_flag_every_bn_folds_and_only_the_unread_initializer_inputs_go():
    model = fixtures.exporter_initializer_inputs()
    folded, report = fold_and_compare(model, expect_folded=4, fold_input_initializers=True)
    conv_weights = [node.input[1] for node in model.graph.node if node.op_type == "Conv"]
    unread = set(bn_parameter_names(model)) | set(conv_weights)
    assert sorted(report.removed_inputs) == sorted(unread)
    # What remains: the image and the head's weights, which no fold touched, in their order.
    assert input_names(folded) == ["x", "fc_w", "fc_b"]
    assert not unread & {tensor.name for tensor in folded.graph.initializer}
    assert report.initializer_inputs.folded_as_constants and report.initializer_inputs.bn_kept == 0
    text = report.render()
    assert "graph inputs removed: 20" in text and "folded as constants (--fold-input-initializers)" in text
    assert report.to_dict()["removed_inputs"] == report.removed_inputs


def test_an_initializer_input_still_read_stays_and_user_inputs_never_change():
    # Two Convs share W; only the first has a BN: W is copied, and stays (an input still read by the second Conv).
    model = fixtures.shared_weight_convs()
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    folded, report = fold_and_compare(model, expect_folded=1, fold_input_initializers=True)
    assert "W" in input_names(folded) and "W" in {t.name for t in folded.graph.initializer}
    assert sorted(report.removed_inputs) == sorted(bn_parameter_names(model))
    assert input_names(folded) == [name for name in input_names(model) if name not in report.removed_inputs]


def test_a_model_with_few_initializer_inputs_is_not_called_an_exporter_artifact():
    model = fixtures.growing_activations_net(depth=3)
    first = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(first.name, first.data_type, list(first.dims)))
    _, report = bnfold.fold(model)
    assert report.initializer_inputs is None and "initializers are also graph inputs" not in report.render()
    assert report.kept_count == 1  # the BN after that Conv, with its own reason


def test_below_ir4_initializer_inputs_are_constants_and_no_artifact_is_reported():
    model = fixtures.initializer_as_input(ir_version=3)
    model.opset_import[0].version = 8
    _, report = bnfold.fold(model)
    assert report.initializer_inputs is None and report.folded_count == 1


def test_written_file_is_no_larger_than_the_original(tmp_path):
    original_size = FIXTURE.stat().st_size
    model = onnx.load(FIXTURE)
    bn_bytes = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer
                   if t.name in set(bn_parameter_names(model)))
    report = bnfold.fold_file(FIXTURE, tmp_path / "flag.onnx", fold_input_initializers=True)
    folded_size = (tmp_path / "flag.onnx").stat().st_size
    assert folded_size <= original_size
    # The weights keep their size; each Conv gains a bias of its channel count; the BN statistics go.
    new_biases = 4 * 16 * 4
    assert report.initializer_bytes_after == report.initializer_bytes_before - bn_bytes + new_biases
    assert abs(folded_size - (original_size - bn_bytes)) < 0.05 * original_size
    bnfold.fold_file(FIXTURE, tmp_path / "plain.onnx")
    assert (tmp_path / "plain.onnx").stat().st_size <= original_size
    assert_same_outputs(model, onnx.load(tmp_path / "flag.onnx"))


def test_cli_says_it_once_and_in_json(tmp_path):
    result = CliRunner().invoke(cli, [str(FIXTURE), "--dry-run", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert result.output.count("pass --fold-input-initializers to fold them as constants") == 1
    data = json.loads(CliRunner().invoke(cli, [str(FIXTURE), "--dry-run", "--json", "--no-verify",
                                               "--fold-input-initializers"]).output)
    assert data["bn_folded"] == 4 and len(data["removed_inputs"]) == 20
    assert data["initializer_inputs"] == {"initializers": 22, "listed_as_inputs": 22, "folded_as_constants": True,
                                          "bn_kept": 0}
