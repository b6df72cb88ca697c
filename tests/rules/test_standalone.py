import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import fold
from bnfold.rules import RULES, standalone
from models import fixtures
from support import fold_and_compare, op_types


def _constants(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_bn_after_the_graph_input_becomes_mul_and_add():
    """What tests/test_fold.py's standalone_bn refusal becomes now that the fallback exists."""
    folded, report = fold_and_compare(fixtures.standalone_bn(), expect_folded=1, standalone=True)
    assert op_types(folded) == ["Mul", "Add"]
    assert folded.graph.node[0].input[0] == "x" and folded.graph.node[1].output[0] == "y"
    decision = report.decisions[0]
    assert decision.rule == "standalone" and decision.into_op == "Mul+Add"
    constants = _constants(folded)
    assert [constants[name].shape for name in (folded.graph.node[0].input[1], folded.graph.node[1].input[1])] \
        == [(3, 1, 1), (3, 1, 1)]
    assert not {"bn_scale", "bn_bias", "bn_mean", "bn_var"} & set(constants)


@pytest.mark.parametrize("op, rank", [
    ("Relu", 4), ("PRelu", 4), ("MaxPool", 4), ("Concat", 4), ("Add", 4),
    ("Relu", 2), ("Relu", 3), ("MaxPool", 5),
])
def test_bn_after_ops_nothing_folds_into_becomes_mul_and_add(op, rank):
    folded, report = fold_and_compare(fixtures.bn_after(op, rank=rank), expect_folded=1, standalone=True)
    assert op_types(folded)[-2:] == ["Mul", "Add"] and report.decisions[0].rule == "standalone"
    scale = _constants(folded)[folded.graph.node[-2].input[1]]
    assert scale.shape == (scale.shape[0],) + (1,) * (rank - 2)


def test_float16_bn_gets_float16_constants():
    folded, report = fold_and_compare(fixtures.bn_after("Relu", dtype=np.float16), expect_folded=1, standalone=True)
    assert {t.data_type for t in folded.graph.initializer} == {fixtures.tensor_type(np.float16)}
    assert report.max_rounding_error > 0


def test_float16_data_with_float32_statistics_gets_constants_in_the_data_dtype():
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 3, 4, 4])
    model = fixtures.make_model([helper.make_node("Relu", ["x"], ["h"]), fixtures.bn_node("h", "y", "bn")], [x], [y],
                                fixtures.bn_parameters(3, rng, "bn", np.float32))
    folded, _ = fold_and_compare(model, expect_folded=1, standalone=True)
    assert {t.name: t.data_type for t in folded.graph.initializer} == {
        "bn_bnfold_scale": TensorProto.FLOAT16, "bn_bnfold_shift": TensorProto.FLOAT16}


def test_by_default_the_bn_stays_and_the_reason_names_the_option():
    """Mul + Add is opt-in: ONNX Runtime runs it 1.1-1.5x slower than the BN (benchmarks/runtime_latency.py)."""
    model = fixtures.bn_after("Concat")
    folded, report = fold(model)
    assert report.folded_count == 0 and "--standalone would make it Mul + Add" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_opt_out_keeps_the_bn_with_its_reason():
    model = fixtures.standalone_bn()
    folded, report = fold(model, skip=["standalone"])
    assert report.folded_count == 0 and "input 'x' comes from a graph input" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_densenet_block_mixes_standalone_forward_and_backward_folds():
    folded, report = fold_and_compare(fixtures.densenet_block(), expect_folded=3, standalone=True)
    assert {d.node: d.rule for d in report.decisions} == {"bn1": "standalone", "bn2": "forward", "bn3": "backward"}
    assert op_types(folded).count("BatchNormalization") == 0


def test_input_bn_before_a_padded_conv_becomes_mul_and_add():
    folded, report = fold_and_compare(fixtures.standalone_input_bn(), expect_folded=1, standalone=True)
    assert op_types(folded)[:3] == ["Mul", "Add", "Conv"] and report.decisions[0].rule == "standalone"


@pytest.mark.parametrize("build, reason", [
    (fixtures.multi_consumer_conv, "Conv 'conv' output 'conv_out' also feeds side_relu"),
    (lambda: fixtures.conv_reshape_bn(target=(-1, 8, 5), batch=2), "may move elements out of their channel"),
])
def test_bn_a_producer_rule_refused_keeps_that_reason(build, reason):
    model = build()
    folded, report = fold(model)
    assert report.folded_count == 0 and reason in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_bn_after_a_skipped_producer_rule_is_not_turned_into_mul_add():
    _, report = fold(fixtures.conv_bn(), skip=["conv"])
    assert report.folded_count == 0


def bn_after_custom_op(h_type=None, y_elem_type=TensorProto.FLOAT):
    """x -> custom-domain op -> BN -> y (no shape): neither the model nor ONNX shape inference knows BN's type."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Mystery", ["x"], ["h"], domain="example.custom", name="mystery"),
             fixtures.bn_node("h", "y", "bn")]
    model = fixtures.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                                [helper.make_tensor_value_info("y", y_elem_type, None)],
                                fixtures.bn_parameters(3, rng, "bn"))
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    if h_type is not None:
        model.graph.value_info.append(h_type)
    return model


def test_unknown_rank_is_refused():
    model = bn_after_custom_op()
    folded, report = fold(model)
    assert "Mul/Add constants cannot be shaped: the rank of 'h' is unknown: the model declares no shape for it and " \
           "ONNX shape inference found none; declaring its shape in value_info" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_undeclared_dtype_is_refused():
    model = bn_after_custom_op(helper.make_tensor_value_info("h", TensorProto.UNDEFINED, ["N", 3, 5, 5]),
                               y_elem_type=TensorProto.UNDEFINED)
    _, report = fold(model)
    assert "element type of the BN input is not declared" in report.kept[0].reason


def test_shapes_missing_from_the_export_are_inferred():
    """Exporters often declare no intermediate shapes: ONNX shape inference supplies the rank and dtype."""
    folded, report = fold_and_compare(fixtures.bn_after("Relu", declare_shapes=False), expect_folded=1,
                                      standalone=True)
    assert report.decisions[0].rule == "standalone"


def test_standalone_is_the_last_bn_rule():
    """The engine offers a BN to the rules that take BatchNormalization in RULES order: standalone, the fallback,
    comes last; the sums' rules (merge_branches, then decomposed) take no BN."""
    assert [rule.name for rule in RULES if "BatchNormalization" in rule.candidates] == \
        ["attention", "forward", "sum_forward", "split_forward", "backward", "backward_tree", "standalone"]
    assert RULES[6] is standalone.RULE
    assert [rule.name for rule in RULES if "Add" in rule.candidates] == ["merge_branches", "decomposed"]
