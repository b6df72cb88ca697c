"""The end-to-end check catches wrong folds that a single-peak output tolerance lets through, names the BN, runs
both branches of an If, and refuses to call "nothing compared" a pass."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.checking.compare import compare_outputs
from bnfold.errors import UsageError
from models import fixtures
from verify_models import make_model

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def _labels(report):
    return {d.output: d.label for d in report.folded}


def _initializer(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def test_resnet_with_two_folded_bias_channels_swapped_fails_naming_the_bn():
    original = onnx.load(ZOO / "resnet_style.onnx")
    folded, report = bnfold.fold(original)
    decision = next(d for d in report.folded if "layer1/bn1" in d.node)
    producer = next(n for n in folded.graph.node if decision.output in n.output)
    bias = _initializer(folded, producer.input[2])
    values = numpy_helper.to_array(bias).copy()
    order = np.argsort(values)
    values[[order[0], order[-1]]] = values[[order[-1], order[0]]]  # the two most different channels
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))

    assert bnfold.verify(original, bnfold.fold(original)[0], intermediates=True).passed
    result = bnfold.verify(original, folded, intermediates=True, fold_labels=_labels(report))
    assert not result.passed
    assert result.first_divergence == decision.output
    assert result.divergence_source == decision.label
    assert decision.output in result.summary() and "first diverging tensor" in result.summary()


def _fold_with_bn_parameters(model, bn_name, **changes):
    """Fold `model` after changing one BN's parameters: the folded constants a buggy fold would write."""
    mutated = onnx.ModelProto()
    mutated.CopyFrom(model)
    node = next(n for n in mutated.graph.node if n.name == bn_name)
    for slot, role in enumerate(("scale", "bias", "mean", "var"), start=1):
        if role in changes:
            tensor = _initializer(mutated, node.input[slot])
            tensor.CopyFrom(numpy_helper.from_array(changes[role](numpy_helper.to_array(tensor)), tensor.name))
    return bnfold.fold(mutated)


def test_mixed_scale_head_with_mean_not_subtracted_on_scores_fails():
    original = fixtures.mixed_scale_head(scores=4, boxes=4, box_scale=1e4)

    def drop_score_means(mean):
        mean = mean.copy()
        mean[:4] = 0
        return mean

    mutant, report = _fold_with_bn_parameters(original, "head", mean=drop_score_means)
    result = bnfold.verify(original, mutant, intermediates=True, fold_labels=_labels(report))
    assert not result.passed and result.failed_outputs == ["pred"]
    assert "head" in result.divergence_source
    assert result.outputs[0].per_channel
    # One peak for the whole output (the old rule) lets the wrong scores through.
    peak = float(np.abs(result.outputs[0].atol)) / 1e-4
    assert bnfold.verify(original, mutant, atol=1e-4 * peak).passed


def test_deep_net_with_a_late_mean_not_subtracted_fails_naming_the_bn():
    """Activations grow to ~1e5-1e6: the fold of layer 10 without its mean moves the logits by ~85x the correct
    fold's own rounding, which one tolerance for the whole logits tensor would let through."""
    original = fixtures.growing_activations_net()
    mutant, report = _fold_with_bn_parameters(original, "l10", mean=np.zeros_like)
    result = bnfold.verify(original, mutant, intermediates=True, fold_labels=_labels(report))
    assert not result.passed and result.divergence_source == next(d.label for d in report.folded if d.node == "l10")
    assert bnfold.verify(original, bnfold.fold(original)[0], intermediates=True).passed


def test_intermediates_inside_a_fold_region_are_not_compared():
    """Conv -> Reshape -> BN: after the fold the Conv's output carries the BN's result under its old name."""
    original = fixtures.conv_reshape_bn()
    folded, report = bnfold.fold(original)
    assert report.folded_count == 1
    result = bnfold.verify(original, folded, intermediates=True)
    assert result.passed and result.intermediates_checked


def _if_model(else_scale: float) -> onnx.ModelProto:
    """y = If(cond, then: Relu(x), else: x * else_scale); cond is a scalar bool graph input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    then_out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])
    else_out = helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [then_out])
    factor = numpy_helper.from_array(np.array(else_scale, np.float32), "factor")
    else_graph = helper.make_graph([helper.make_node("Mul", ["x", "factor"], ["e"])], "else", [], [else_out],
                                   [factor])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)
    return make_model([node], [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), x],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])


def test_a_scalar_bool_if_condition_is_fed_and_both_branches_run():
    result = bnfold.verify(_if_model(2.0), _if_model(2.0))
    assert result.passed and result.branch_inputs == {"cond": [True, False]}
    assert "cond feeds an If: ran with True and False" in result.summary()
    assert not bnfold.verify(_if_model(2.0), _if_model(2.5)).passed  # only the else branch differs


def test_nothing_finite_to_compare_is_not_a_pass():
    log = make_model([helper.make_node("Log", ["x"], ["y"])],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    result = bnfold.verify(log, log, inputs={"x": -np.ones((2, 3), np.float32)})
    assert not result.passed
    assert "nothing finite to compare" in result.outputs[0].problem


def _zipmap_model(factor: float) -> onnx.ModelProto:
    nodes = [helper.make_node("Mul", ["x", "f"], ["p"]),
             helper.make_node("ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2])]
    output = helper.make_value_info("probabilities", helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))))
    graph = helper.make_graph(nodes, "zipmap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [output], [numpy_helper.from_array(np.array(factor, np.float32), "f")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                             ir_version=8)


def test_maps_in_a_sequence_are_compared_with_the_float_tolerance():
    rounding = bnfold.verify(_zipmap_model(1.0), _zipmap_model(float(np.float32(1) + np.finfo(np.float32).eps)))
    assert rounding.passed, rounding.summary()
    assert not bnfold.verify(_zipmap_model(1.0), _zipmap_model(1.01)).passed
    structure = compare_outputs({"m": [{0: 1.0}]}, {"m": [{1: 1.0}]})
    assert not structure.passed and "structure differs" in structure.outputs[0].problem


def test_api_arguments_accept_a_single_string_and_name_bad_parameters(tmp_path):
    model = fixtures.conv_bn()
    assert bnfold.verify(model, model, input_shapes="x:2x4x9x9").input_shapes == {"x": (2, 4, 9, 9)}
    np.savez(tmp_path / "a.npz", x=np.ones((1, 4, 9, 9), np.float32))
    assert bnfold.verify(model, model, input_files=str(tmp_path / "a.npz")).seed is None
    with pytest.raises(UsageError, match=r"input_shapes\['x'\] has a negative dimension"):
        bnfold.verify(model, model, input_shapes={"x": (1, 4, -9, 9)})
    with pytest.raises(UsageError, match="bad shape"):
        bnfold.verify(model, model, input_shapes="x:1x4x-9x9")
    with pytest.raises(UsageError, match="seed must be a non-negative integer"):
        bnfold.verify(model, model, seed=-1)
    with pytest.raises(UsageError, match="runs must be"):
        bnfold.verify(model, model, runs="2")
    with pytest.raises(UsageError, match="input_files must be"):
        bnfold.verify(model, model, input_files=3)
    with pytest.raises(UsageError, match="atol must be"):
        bnfold.verify(model, model, atol="1e-3")


@pytest.mark.parametrize("name", ["text_recognizer_dynamic_width", "detector_dynamic_hw"])
def test_dynamic_fixtures_fold_and_verify_with_no_flags(tmp_path, name):
    from click.testing import CliRunner
    from bnfold.cli import cli

    source = Path(__file__).resolve().parents[2] / "models" / "fixtures" / f"{name}.onnx"
    result = CliRunner().invoke(cli, [str(source), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 0, result.output
    assert "input shapes: x 1x3x" in result.output and "dynamic dims chosen" in result.output
    assert "PASSED" in result.output


@pytest.mark.parametrize("over_limit", [False, True])
def test_models_read_from_paths_reach_ort_weightless_unless_past_protobufs_limit(tmp_path, monkeypatch, over_limit):
    """A path's model goes to ONNX Runtime as the held model (its weights read by ORT from the file: five times
    faster than ORT parsing the file); a model past protobuf's 2 GiB limit (lowered here) goes by its path. Either
    way a correct fold passes and a wrong one fails."""
    from bnfold import runtime, tensors

    model = fixtures.conv_bn(c_in=16, c_out=32, seed=3)
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    folded, _ = bnfold.fold(model)
    onnx.save(folded, tmp_path / "folded.onnx")
    wrong = onnx.ModelProto()
    wrong.CopyFrom(folded)
    bias = next(t for t in wrong.graph.initializer if t.dims == [32])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
    onnx.save(wrong, tmp_path / "wrong.onnx")
    if over_limit:
        monkeypatch.setattr(tensors, "PROTOBUF_LIMIT", 4096)
    given = []
    real = runtime.make_session
    monkeypatch.setattr(runtime, "make_session", lambda model, **kw: given.append(model) or real(model, **kw))
    assert bnfold.verify(source, tmp_path / "folded.onnx").passed
    assert not bnfold.verify(source, tmp_path / "wrong.onnx").passed
    assert given and all(isinstance(item, str) == over_limit for item in given)


def test_a_model_with_external_data_files_reaches_ort_by_its_path(tmp_path, monkeypatch):
    """ORT reads a model's data files itself (bnfold would hand it a second, in-memory copy of every weight)."""
    from bnfold import runtime, saving

    model = fixtures.conv_bn(c_in=16, c_out=32, seed=3)
    folded, _ = bnfold.fold(model)
    saving.save_model(model, tmp_path / "m.onnx", external_data=True)
    onnx.save(folded, tmp_path / "folded.onnx")
    assert (tmp_path / "m.onnx.data").exists()
    given = []
    real = runtime.make_session
    monkeypatch.setattr(runtime, "make_session", lambda model, **kw: given.append(model) or real(model, **kw))
    assert bnfold.verify(tmp_path / "m.onnx", tmp_path / "folded.onnx").passed
    assert [isinstance(item, str) for item in given] == [True, False]
