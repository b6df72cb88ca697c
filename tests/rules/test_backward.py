import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import fold
from bnfold.rules.affine import conv_input_affine, rows_affine
from models import fixtures
from support import fold_and_compare, op_types

# Refusal tests skip the Mul + Add fallback, which would otherwise replace a BN whose consumers refuse it.
NO_FALLBACK = {"skip": ["standalone"]}


def _assert_refused(model, reason):
    folded, report = fold(model, **NO_FALLBACK)
    assert report.folded_count == 0 and reason in report.kept[0].reason, report.render()
    assert folded.SerializeToString() == model.SerializeToString()


def test_conv_input_affine_matches_the_grouped_definition():
    rng = np.random.default_rng(1)
    c_in, c_out, group = 6, 4, 2
    weight, bias = rng.normal(size=(c_out, c_in // group, 3)), rng.normal(size=c_out)
    scale, shift = rng.normal(size=c_in), rng.normal(size=c_in)
    new_weight, new_bias = conv_input_affine(weight, bias, scale, shift, group)
    for o in range(c_out):
        channels = (o // (c_out // group)) * (c_in // group) + np.arange(c_in // group)
        np.testing.assert_allclose(new_weight[o], weight[o] * scale[channels][:, None])
        np.testing.assert_allclose(new_bias[o], bias[o] + np.sum(weight[o] * shift[channels][:, None]))


def test_rows_affine_is_the_expanded_product():
    rng = np.random.default_rng(2)
    x, weight = rng.normal(size=(3, 4)), rng.normal(size=(4, 5))
    scale, shift = rng.normal(size=4), rng.normal(size=4)
    scaled, bias = rows_affine(weight, scale, shift)
    np.testing.assert_allclose(x @ scaled + bias, (x * scale + shift) @ weight)


@pytest.mark.parametrize("settings", [
    dict(),
    dict(bias=False),
    dict(kernel=3),  # pads 0: every window is whole
    dict(kernel=3, auto_pad="VALID"),
    dict(kernel=1, auto_pad="SAME_UPPER"),  # a 1x1 kernel pads nothing
    dict(kernel=3, stride=2),
    dict(group=2, c_out=4),
    dict(group=8, c_out=8, kernel=3),  # depthwise
    dict(group=4, c_out=8),
    dict(rank=1, kernel=3, size=9),
    dict(rank=3, kernel=2, size=4),
    dict(kernel=3, pad=1, zero_shift=True),  # padding is harmless when the shift is exactly 0
    dict(kernel=3, auto_pad="SAME_LOWER", zero_shift=True, bias=False),
])
def test_bn_before_conv_folds_into_it(settings):
    folded, report = fold_and_compare(fixtures.bn_conv(**settings), expect_folded=1)
    assert op_types(folded) == ["Conv"] and folded.graph.node[0].input[0] == "x"
    assert report.decisions[0].rule == "backward" and report.decisions[0].into == "conv"


@pytest.mark.parametrize("settings", [
    dict(),
    dict(trans_b=1, alpha=0.5, beta=2.0),
    dict(bias_shape=None),
    dict(bias_shape=()),
    dict(bias_shape=(1, 5)),
    dict(bias_shape=(3, 5)),
    dict(bias_shape=(3, 1)),
])
def test_bn_before_gemm_folds_into_its_rows(settings):
    folded, _ = fold_and_compare(fixtures.bn_gemm(**settings), expect_folded=1)
    assert op_types(folded) == ["Gemm"]


@pytest.mark.parametrize("consumers", [1, 2])
def test_bn_before_matmul_scales_rows_and_adds_the_bias_after(consumers):
    folded, report = fold_and_compare(fixtures.bn_matmul(consumers=consumers), expect_folded=1)
    assert op_types(folded).count("BatchNormalization") == 0
    assert op_types(folded).count("Add") == consumers
    assert report.decisions[0].into == ", ".join(f"matmul{i}" for i in range(consumers))


def test_two_conv_consumers_sharing_a_weight_both_fold():
    folded, report = fold_and_compare(fixtures.bn_two_consumers("Conv"), expect_folded=1)
    assert op_types(folded) == ["Conv", "Conv"]
    assert report.decisions[0].into == "conv1, conv2"


@pytest.mark.parametrize("model, reason", [
    (lambda: fixtures.bn_conv(kernel=3, pad=1),
     "Conv 'conv' pads its input (pads=[1, 1, 1, 1]) and the shift is not zero: the padded zeros would not receive it"),
    (lambda: fixtures.bn_conv(kernel=3, auto_pad="SAME_UPPER"),
     "pads its input (auto_pad=SAME_UPPER with kernel [3, 3]) and the shift is not zero"),
    (lambda: fixtures.bn_two_consumers("Relu"), "'bn_out' also feeds Relu 'relu', which cannot absorb the BN"),
    (lambda: fixtures.bn_gemm(trans_a=1), "Gemm 'gemm' has transA=1: BN's channel axis is the Gemm's M axis"),
    (lambda: fixtures.bn_gemm(beta=0.0), "Gemm 'gemm' has beta=0, so its bias C cannot absorb the shift"),
    (lambda: fixtures.bn_matmul(x_rank=3), "BN's channels reach MatMul 'matmul0' on axis 1, its input channels are on axis 2"),
])
def test_unfoldable_consumers_are_refused_and_nothing_changes(model, reason):
    _assert_refused(model(), reason)


def test_bn_output_that_is_a_graph_output_is_refused():
    model = fixtures.bn_conv()
    model.graph.output.append(helper.make_tensor_value_info("bn_out", TensorProto.FLOAT, None))
    _assert_refused(model, "'bn_out' is also a graph output")


def test_matmul_whose_output_is_a_graph_output_cannot_take_the_bias_add():
    model = fixtures.bn_matmul()
    model.graph.output.append(helper.make_tensor_value_info("mm0", TensorProto.FLOAT, None))
    _assert_refused(model, "MatMul 'matmul0' output is a graph output")


def test_matmul_bias_adds_go_right_after_each_matmul_whatever_the_node_order():
    model = fixtures.bn_matmul(consumers=2)
    nodes = list(model.graph.node)  # bn, matmul0, matmul1, relu0, relu1 -> bn, matmul0, relu0, matmul1, relu1
    del model.graph.node[:]
    model.graph.node.extend([nodes[0], nodes[1], nodes[3], nodes[2], nodes[4]])
    folded, _ = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["MatMul", "Add", "Relu", "MatMul", "Add", "Relu"]


def test_weight_that_is_not_constant_is_refused():
    model = fixtures.bn_conv()
    weight = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.input.append(helper.make_tensor_value_info("W", weight.data_type, list(weight.dims)))
    model.graph.initializer.remove(weight)
    _assert_refused(model, "Conv weight is not a constant")


def test_bn_followed_by_padded_conv_falls_back_to_mul_add():
    folded, report = fold_and_compare(fixtures.bn_conv(kernel=3, pad=1), expect_folded=1, standalone=True)
    assert op_types(folded) == ["Mul", "Add", "Conv"] and report.decisions[0].rule == "standalone"


def test_conv_weight_shared_with_an_unrelated_conv_is_copied():
    model = fixtures.bn_conv(c_in=4, c_out=4)
    model.graph.node.append(helper.make_node("Conv", ["x", "W", "B"], ["other"], name="unrelated"))
    model.graph.output.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", 4, 7, 7]))
    folded, _ = fold_and_compare(model, expect_folded=1)
    kept = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(kept["W"], original["W"])
    assert folded.graph.node[1].input[1:] == ["W", "B"]
