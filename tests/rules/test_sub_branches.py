"""merge_branches through Sub and Neg (FastViT's RepMixer `mixer(x) - norm(x)`): Sub's second input, or a Neg
step, is a negated branch, merged like an Add's; checked in ONNX Runtime against the unmerged model."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, fold_and_compare, op_types

C = 6


def _block(kind, seed=0):
    """x -> Conv3x3(depthwise)+BN and BN(x), combined by `kind`: "sub" conv - bn, "sub_reversed" bn - conv,
    "neg" conv + Neg(bn), "plain" x - conv -> Relu -> y."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (C, 1, 3, 3)).astype(np.float32), "W")]
    initializers += bn_parameters(C, rng, "bn_conv") + bn_parameters(C, rng, "norm")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4, group=C),
             bn_node("c", "mixer", "bn_conv"), bn_node("x", "n", "norm")]
    if kind == "sub":
        nodes.append(helper.make_node("Sub", ["mixer", "n"], ["s"], name="sub"))
    elif kind == "sub_reversed":
        nodes.append(helper.make_node("Sub", ["n", "mixer"], ["s"], name="sub"))
    elif kind == "neg":
        nodes += [helper.make_node("Neg", ["n"], ["negated"], name="neg"),
                  helper.make_node("Add", ["mixer", "negated"], ["s"], name="add")]
    else:
        nodes = nodes[:1] + [helper.make_node("Sub", ["x", "c"], ["s"], name="sub")]
        initializers = initializers[:1]
    nodes.append(helper.make_node("Relu", ["s"], ["y"], name="relu"))
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 7, 7])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 7, 7])], initializers)


@pytest.mark.parametrize("kind", ["sub", "sub_reversed", "neg", "plain"])
def test_a_subtracted_or_negated_branch_merges_into_one_conv(kind):
    folded, report = fold_and_compare(_block(kind))
    assert op_types(folded) == ["Conv", "Relu"], report.render(verbose=True)
    assert report.merges and all(merge.merged for merge in report.merges)
    assert any("minus" in branch for branch in report.merges[0].branches) == (kind != "neg")
    assert report.kept == []


def test_a_sub_of_two_different_tensors_is_no_branch_merge():
    """a - b of unrelated inputs is no re-parameterizable block: nothing is reported or changed."""
    nodes = [helper.make_node("Sub", ["a", "b"], ["y"], name="sub")]
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, C, 4, 4]) for n in ("a", "b", "y")]
    model = make_model(nodes, value[:2], value[2:])
    folded, report = bnfold.fold(model)
    assert report.merges == [] and op_types(folded) == ["Sub"]
    assert_same_outputs(model, folded)


def test_neg_is_a_look_through_step_a_producer_absorbs():
    """Conv -> Neg -> BN: the Neg is the affine step x * -1, folded into the Conv with the BN."""
    rng = np.random.default_rng(3)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (C, 3, 3, 3)).astype(np.float32), "W")]
    initializers += bn_parameters(C, rng, "bn")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Neg", ["c"], ["negated"], name="neg"), bn_node("negated", "y", "bn")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 5, 5])], initializers)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["Conv"] and report.decisions[0].through == ["Neg"]
