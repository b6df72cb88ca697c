"""Types are looked up in the scope that defines a name: function bodies and If branches that reuse a main-graph
name never get its rank, declared types that contradict shape inference are not trusted, and attributes a
function body takes from its call site keep the BN with a reason."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models import fixtures
from support import assert_same_outputs, fold_and_compare, run


def _matmul_bn_nodes(x, prefix, out, rng, k=4, n=6):
    """x -> MatMul(W[k, n]) -> BN(n) -> out, with Constant-node parameters (usable inside a function body)."""
    weight = numpy_helper.from_array(rng.normal(size=(k, n)).astype(np.float32), f"{prefix}_W")
    params = fixtures.bn_parameters(n, rng, f"{prefix}_bn")
    nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in [weight, *params]]
    nodes += [helper.make_node("MatMul", [x, weight.name], ["h"], name=f"{prefix}_matmul"),
              fixtures.bn_node("h", out, f"{prefix}_bn")]
    return nodes


def test_a_function_body_never_takes_the_rank_of_a_main_graph_tensor_of_the_same_name():
    """Main graph: 'h' is [N, 6] (a 2-D MatMul -> BN that folds). Function body: its own 'h' is [N, 5, 5], where BN
    normalizes axis 1, not the MatMul's N axis (the last, also of size 5): folding it as BatchNorm1d would be
    wrong."""
    rng = np.random.default_rng(0)
    body = _matmul_bn_nodes("a", "f", "b", rng, k=4, n=5)
    function = helper.make_function("local", "Block", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    main = _matmul_bn_nodes("x", "m", "y", rng)
    main.append(helper.make_node("Block", ["x3"], ["z"], domain="local"))
    model = fixtures.make_model(
        main, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
               helper.make_tensor_value_info("x3", TensorProto.FLOAT, ["N", 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 6]))
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(function)
    folded, report = fold_and_compare(model, expect_folded=1, check=False)
    by_graph = {d.graph: d for d in report.decisions}
    assert by_graph["main"].folded
    kept = by_graph["function local.Block"]
    assert not kept.folded and "rank" in kept.reason


def _if_model(then_rank: int, else_rank: int):
    """y = If(c, then: BN(MatMul(x_then)), else: BN(MatMul(x_else))); both branches name their tensors 't'."""
    rng = np.random.default_rng(1)

    def branch(name, source, out):
        nodes = _matmul_bn_nodes(source, name, out, rng, k=4, n=5)
        for node in nodes:
            node.output[:] = ["t" if o == "h" else o for o in node.output]
            node.input[:] = ["t" if i == "h" else i for i in node.input]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

    shapes = {2: ["N", 4], 3: ["N", 5, 4]}
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "x_then", "o_then"),
                            else_branch=branch("else", "x_else", "o_else"))
    return fixtures.make_model(
        [node], [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("x_then", TensorProto.FLOAT, shapes[then_rank]),
                 helper.make_tensor_value_info("x_else", TensorProto.FLOAT, shapes[else_rank])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


@pytest.mark.parametrize("then_rank, else_rank", [(2, 3), (3, 2)])
def test_if_branches_reusing_a_name_each_use_their_own_rank(then_rank, else_rank):
    model = _if_model(then_rank, else_rank)
    folded, report = bnfold.fold(model)
    rng = np.random.default_rng(2)
    for condition in (True, False):  # both branches, whatever the model's inputs would pick
        feeds = {"c": np.array(condition), "x_then": rng.normal(size=[3, 4] if then_rank == 2 else [3, 5, 4]),
                 "x_else": rng.normal(size=[3, 4] if else_rank == 2 else [3, 5, 4])}
        feeds = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in feeds.items()}
        np.testing.assert_allclose(run(folded, feeds)["y"], run(model, feeds)["y"], rtol=1e-5, atol=1e-5)
    folded_branches = {d.graph.rsplit(".", 1)[-1]: d.folded for d in report.decisions}
    assert folded_branches == {"then_branch": then_rank == 2, "else_branch": else_rank == 2}


def test_declared_value_info_that_contradicts_inference_is_not_trusted():
    """The plain checker accepts a value_info declaring the BN input 2-D; it is 3-D. A standalone BN built from
    the declared rank would broadcast on the wrong axis; the fold must refuse with the reason."""
    model = fixtures.bn_after("Relu", rank=3)
    declared = next(value for value in model.graph.value_info if value.name == "h")
    declared.CopyFrom(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 3]))
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0, report.render()
    assert "contradicts" in report.kept[0].reason
    assert_same_outputs(model, folded)


def _with_call_site_attribute(model, node_index: int, attribute: str, value):
    """The function body's node takes `attribute` from a function attribute that both call sites set."""
    function = model.functions[0]
    function.attribute.append(f"{attribute}_value")
    target = function.node[len(function.node) + node_index]
    reference = helper.make_attribute(attribute, value)
    reference.ref_attr_name = f"{attribute}_value"
    for position, existing in enumerate(target.attribute):
        if existing.name == attribute:
            del target.attribute[position]
            break
    target.attribute.append(reference)
    for call in model.graph.node:
        call.attribute.append(helper.make_attribute(f"{attribute}_value", value))
    return model


def test_an_epsilon_set_per_call_site_keeps_the_bn_unless_functions_are_inlined():
    model = _with_call_site_attribute(fixtures.function_model(weights_inside=True), -1, "epsilon", 1e-3)
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "function attribute 'epsilon_value'" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()
    fold_and_compare(model, expect_folded=2, inline_functions=True)


def test_a_conv_group_set_per_call_site_does_not_stop_a_forward_fold():
    """A forward fold scales weight axis 0 whatever the groups: it needs no group, and folds."""
    model = _with_call_site_attribute(fixtures.function_model(weights_inside=True), -2, "group", 1)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert "call site" in report.decisions[0].local_check


def _gemm_function_model(attribute: str, value):
    """A function F(a) = BN(Gemm(a, W)) whose Gemm takes `attribute` from the call site."""
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(5, 4) if attribute == "transB" else (4, 5)).astype(np.float32)
    body = [helper.make_node("Constant", [], [t.name], value=t)
            for t in [numpy_helper.from_array(weight, "gW"), *fixtures.bn_parameters(5, rng, "gbn")]]
    gemm = helper.make_node("Gemm", ["a", "gW"], ["g"], name="gemm")
    reference = helper.make_attribute(attribute, value)
    reference.ref_attr_name = "value"
    gemm.attribute.append(reference)
    body += [gemm, fixtures.bn_node("g", "b", "gbn")]
    function = helper.make_function("local", "GemmBn", ["a"], ["b"], body, [helper.make_opsetid("", 17)], ["value"])
    call = helper.make_node("GemmBn", ["x"], ["y"], domain="local", value=value)
    model = fixtures.make_model([call], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])])
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(function)
    return model


@pytest.mark.parametrize("attribute, value", [("transB", 1), ("beta", 0.5)])
def test_gemm_attributes_set_per_call_site_keep_the_bn(attribute, value):
    model = _gemm_function_model(attribute, value)
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "function attribute 'value'" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()
    fold_and_compare(model, expect_folded=1, inline_functions=True)
