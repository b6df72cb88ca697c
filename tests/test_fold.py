import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold import fold
from models import fixtures
from support import fold_and_compare, op_types


def test_fold_returns_a_new_model_and_leaves_the_input_alone():
    model = fixtures.conv_bn()
    before = model.SerializeToString()
    folded, report = fold(model)
    assert model.SerializeToString() == before
    assert folded is not model and report.folded_count == 1


def test_chain_of_bns_ends_as_one_conv():
    folded, report = fold_and_compare(fixtures.conv_bn_bn(), expect_folded=2)
    assert op_types(folded) == ["Conv"]
    assert [d.into for d in report.decisions] == ["conv", "conv"]


def test_shared_weight_is_copied_so_the_other_conv_is_unchanged():
    model = fixtures.shared_weight_convs()
    folded, report = fold_and_compare(model, expect_folded=1)
    conv1, conv2 = folded.graph.node
    assert conv2.input[1] == "W" and conv1.input[1] != "W"
    original_w = numpy_helper.to_array(model.graph.initializer[0])
    kept_w = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}["W"]
    np.testing.assert_array_equal(kept_w, original_w)


@pytest.mark.parametrize("build, reason", [
    (fixtures.multi_consumer_conv, "Conv 'conv' output 'conv_out' also feeds side_relu"),
    (fixtures.training_mode_bn, "training_mode=1"),
    (fixtures.weight_as_input, "Conv weight is not a constant: 'W' is a graph input"),
    (fixtures.nonfinite_stats_bn, "BN var contains NaN or inf"),
    (fixtures.gemm_row_bias, "Gemm bias C has shape [3, 5]"),
    (lambda: fixtures.initializer_as_input(ir_version=8, names=["bn_var"]),
     "an initializer that is also a graph input"),
])
def test_refused_bn_is_reported_and_graph_is_byte_identical(build, reason):
    model = build()
    folded, report = fold(model)
    assert report.folded_count == 0 and report.kept_count == 1
    assert reason in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_bn_with_no_neighbour_says_why_when_the_standalone_rule_is_skipped():
    model = fixtures.standalone_bn()
    folded, report = fold(model, skip=["standalone"])
    assert "input 'x' comes from a graph input; nothing to fold it into, and rule 'standalone' is skipped" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_bn_parameters_that_are_not_constant_are_refused():
    model = fixtures.conv_bn()
    model.graph.input.append(helper.make_tensor_value_info("gamma_in", TensorProto.FLOAT, [8]))
    model.graph.node[1].input[1] = "gamma_in"
    _, report = fold(model)
    assert "BN scale is not a constant: 'gamma_in' is a graph input" in report.kept[0].reason


def test_conv_output_that_is_a_graph_output_is_refused():
    model = fixtures.conv_bn()
    model.graph.output.append(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, None))
    _, report = fold(model)
    assert "Conv 'conv' output 'conv_out' is also a graph output" in report.kept[0].reason


def test_var_plus_eps_not_positive_is_refused():
    model = fixtures.conv_bn()
    for tensor in model.graph.initializer:
        if tensor.name == "bn_var":
            tensor.CopyFrom(numpy_helper.from_array(-np.ones(8, np.float32), "bn_var"))
    _, report = fold(model)
    assert "var + epsilon <= 0 at channel 0" in report.kept[0].reason


def test_below_ir4_initializer_inputs_are_constants_and_new_ones_become_inputs_too():
    model = fixtures.initializer_as_input(ir_version=3)
    model.opset_import[0].version = 8
    folded, report = fold(model)
    assert report.folded_count == 1
    onnx.checker.check_model(folded, full_check=True)
    input_names = {v.name for v in folded.graph.input}
    assert {t.name for t in folded.graph.initializer} <= input_names
    assert not any(name.startswith("bn_") for name in input_names)


def test_from_ir4_initializer_inputs_fold_as_constants_with_the_flag_and_user_inputs_stay():
    model = fixtures.initializer_as_input(ir_version=8)
    folded, report = fold_and_compare(model, expect_folded=1, fold_input_initializers=True)
    # The user-facing input stays; the initializer inputs the fold left unread (all of them here) are removed.
    assert [v.name for v in folded.graph.input] == ["x"]
    assert report.removed_inputs == [t.name for t in model.graph.initializer]


def test_idempotent_and_deterministic():
    model = fixtures.conv_bn_bn()
    first, _ = fold(model)
    second, _ = fold(model)
    assert first.SerializeToString() == second.SerializeToString()
    again, report = fold(first)
    assert report.decisions == [] and again.SerializeToString() == first.SerializeToString()


def test_preserves_names_opsets_metadata_and_doc_strings():
    model = fixtures.conv_bn()
    model.doc_string = "my model"
    model.graph.doc_string = "my graph"
    model.producer_name, model.producer_version, model.model_version = "me", "1.2", 7
    onnx.helper.set_model_props(model, {"author": "someone"})
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    folded, _ = fold(model)
    for field in ("doc_string", "producer_name", "producer_version", "model_version", "ir_version"):
        assert getattr(folded, field) == getattr(model, field)
    assert folded.graph.doc_string == "my graph"
    assert list(folded.metadata_props) == list(model.metadata_props)
    assert list(folded.opset_import) == list(model.opset_import)
    assert list(folded.graph.input) == list(model.graph.input)
    assert list(folded.graph.output) == list(model.graph.output)


def test_constant_node_weights_fold_and_leave_no_dead_constants():
    folded, report = fold_and_compare(fixtures.constant_node_weights(), expect_folded=1)
    assert op_types(folded) == ["Conv"]


def test_weight_reached_through_identity_and_cast_folds_and_chain_is_removed():
    model = fixtures.conv_bn()
    graph = model.graph
    graph.node[0].input[1] = "W_cast"
    graph.node.insert(0, helper.make_node("Identity", ["W"], ["W_id"]))
    graph.node.insert(1, helper.make_node("Cast", ["W_id"], ["W_cast"], to=TensorProto.FLOAT))
    folded, _ = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["Conv"]
    assert "W" not in {t.name for t in folded.graph.initializer}


def test_bn_inside_if_branches_folds_with_outer_scope_weights():
    rng = np.random.default_rng(0)
    outer = [numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "W")]

    def branch(name):
        nodes = [helper.make_node("Conv", ["x", "W"], [f"{name}_c"], pads=[1, 1, 1, 1], name=f"{name}_conv"),
                 fixtures.bn_node(f"{name}_c", f"{name}_y", f"{name}_bn")]
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 4, 5, 5])
        return helper.make_graph(nodes, name, [], [out], fixtures.bn_parameters(4, rng, f"{name}_bn"))

    if_node = helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else"))
    model = fixtures.make_model(
        [if_node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], outer)
    folded, report = fold(model)
    assert report.folded_count == 2
    assert {d.graph for d in report.decisions} == {"main/If(y).then_branch", "main/If(y).else_branch"}
    onnx.checker.check_model(folded)
    for cond in (True, False):
        from support import run

        feeds = {"x": rng.normal(size=(1, 4, 5, 5)).astype(np.float32), "cond": np.array(cond)}
        np.testing.assert_allclose(run(folded, feeds)["y"], run(model, feeds)["y"], rtol=1e-5, atol=1e-5)
    assert "W" in {t.name for t in folded.graph.initializer}  # the outer weight is shared: copied, not changed


def test_bn_inside_a_function_with_constant_weights_folds_in_the_body():
    folded, report = fold_and_compare(fixtures.function_model(weights_inside=True), expect_folded=1)
    assert report.decisions[0].graph == "function local.ConvBn"
    assert [n.op_type for n in folded.functions[0].node if n.op_type != "Constant"] == ["Conv"]


def test_bn_fed_by_function_inputs_stays_unless_functions_are_inlined():
    model = fixtures.function_model(weights_inside=False)
    _, report = fold(model)
    assert report.folded_count == 0 and "'fW' is a function input (set per call site)" in report.kept[0].reason
    folded, report = fold_and_compare(model, expect_folded=2, inline_functions=True)
    assert not folded.functions and "BatchNormalization" not in op_types(folded)


def test_skip_rule_keeps_the_bn():
    _, report = fold(fixtures.conv_bn(), skip=["conv"])
    assert report.folded_count == 0


def test_unknown_skip_rule_is_a_usage_error():
    with pytest.raises(bnfold.UsageError, match="unknown rule"):
        fold(fixtures.conv_bn(), skip=["nope"])


def test_report_json_and_table():
    _, report = fold(fixtures.multi_consumer_conv())
    data = report.to_dict()
    assert data["bn_total"] == 1 and data["bn_kept"] == 1
    assert data["ops_before"]["BatchNormalization"] == 1
    assert "kept   bn -> 'y': Conv 'conv' output 'conv_out' also feeds side_relu" in report.render()


def test_unused_initializers_of_the_user_are_left_alone():
    model = fixtures.conv_bn()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused_by_design"))
    folded, _ = fold(model)
    assert "unused_by_design" in {t.name for t in folded.graph.initializer}
    assert not any(t.name.startswith("bn_") for t in folded.graph.initializer)


def test_zero_bias_built_at_run_time_like_the_dynamo_exporter_folds():
    """Conv bias = Expand(CastLike(0, x), Shape(W)[0:1]), as torch.onnx.export(dynamo=True, optimize=False) writes."""
    model = fixtures.conv_bn(bias=False)
    graph = model.graph
    zero = helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32)))
    nodes = [zero,
             helper.make_node("CastLike", ["zero", "x"], ["zero_like"]),
             helper.make_node("Shape", ["W"], ["channels"], start=0, end=1),
             helper.make_node("Expand", ["zero_like", "channels"], ["zero_bias"])]
    graph.node[0].input.append("zero_bias")
    conv_and_bn = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + conv_and_bn)
    folded, _ = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["Conv"]


def test_a_model_without_bn_reports_no_local_check_line():
    _, report = fold(fixtures.attention_without_bn())
    assert "local check" not in report.render()
