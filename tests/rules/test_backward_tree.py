"""backward_tree: a BN whose readers fan out through look-through ops (Next-ViT: BN2d -> tokens -> the q Linear,
and -> AvgPool1d -> BatchNorm1d before k and v) folds when every leaf is a producer or another BN; checked in ONNX
Runtime against the unfolded model. A leaf that cannot absorb keeps the BN with the reason."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, fold_and_compare, op_types

C, K = 6, 5


def _tokens_tree(*, pooled_leaf="bn", pool=None, seed=0):
    """x [N, C, 4, 4] -> BN -> Reshape [N, C, 16] -> (a) Transpose -> MatMul W_q -> q; (b) AveragePool(4) ->
    `pooled_leaf` ("bn": BatchNorm1d -> Transpose -> MatMul W_k; "matmul": Transpose -> MatMul W_k; "relu")."""
    rng = np.random.default_rng(seed)
    initializers = bn_parameters(C, rng, "bn") + [
        numpy_helper.from_array(np.array([0, C, -1], np.int64), "tokens"),
        numpy_helper.from_array(rng.normal(0, 0.5, (C, K)).astype(np.float32), "Wq"),
        numpy_helper.from_array(rng.normal(0, 0.5, (C, K)).astype(np.float32), "Wk")]
    nodes = [bn_node("x", "b", "bn"), helper.make_node("Reshape", ["b", "tokens"], ["r"], name="flatten"),
             helper.make_node("Transpose", ["r"], ["rt"], name="to_tokens", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["rt", "Wq"], ["qm"], name="q"),
             helper.make_node("Relu", ["qm"], ["q"], name="q_relu"),
             helper.make_node("AveragePool", ["r"], ["p"], name="pool", **(pool or {"kernel_shape": [4],
                                                                                    "strides": [4]}))]
    if pooled_leaf == "bn":
        initializers += bn_parameters(C, rng, "bn1d")
        nodes += [bn_node("p", "pn", "bn1d"), helper.make_node("Transpose", ["pn"], ["pt"], name="t2", perm=[0, 2, 1]),
                  helper.make_node("MatMul", ["pt", "Wk"], ["km"], name="k"),
                  helper.make_node("Relu", ["km"], ["k"], name="k_relu")]
    elif pooled_leaf == "matmul":
        nodes += [helper.make_node("Transpose", ["p"], ["pt"], name="t2", perm=[0, 2, 1]),
                  helper.make_node("MatMul", ["pt", "Wk"], ["km"], name="k"),
                  helper.make_node("Relu", ["km"], ["k"], name="k_relu")]
    else:
        nodes.append(helper.make_node("Relu", ["p"], ["k"], name="relu"))
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 4, 4])],
                      [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N", 16, K]),
                       helper.make_tensor_value_info("k", TensorProto.FLOAT, ["N", "a", "b"])], initializers)


@pytest.mark.parametrize("pooled_leaf", ["bn", "matmul"])
def test_a_bn_fanning_out_to_matmuls_and_a_bn_folds_into_all_of_them(pooled_leaf):
    model = _tokens_tree(pooled_leaf=pooled_leaf)
    folded, report = fold_and_compare(model, expect_folded=1 + (pooled_leaf == "bn"))
    first = report.decisions[0]
    assert first.rule == "backward_tree" and sorted(first.through) == ["AveragePool", "Reshape", "Transpose"] + \
        (["Transpose"] if pooled_leaf == "matmul" else [])
    assert "BatchNormalization" not in op_types(folded)


def test_a_leaf_that_cannot_absorb_keeps_the_bn_and_says_which():
    model = _tokens_tree(pooled_leaf="relu")
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "also feeds Relu 'relu'" in report.decisions[0].reason
    assert_same_outputs(model, folded)


def test_a_padded_counted_average_on_one_path_refuses_the_shift():
    model = _tokens_tree(pool={"kernel_shape": [3], "pads": [1, 1], "count_include_pad": 1})
    folded, report = bnfold.fold(model)
    assert not report.decisions[0].folded and "counts them" in report.decisions[0].reason
    assert_same_outputs(model, folded)


def test_a_bn_straight_into_a_bn_composes_into_its_parameters():
    """x -> BN -> BN -> y: nothing to fold into but the second BN, which absorbs the first exactly."""
    rng = np.random.default_rng(3)
    initializers = bn_parameters(C, rng, "first") + bn_parameters(C, rng, "second")
    model = make_model([bn_node("x", "b", "first"), bn_node("b", "y", "second")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 3, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 3, 3])], initializers)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["BatchNormalization"] and report.decisions[0].into_op == "BatchNormalization"
