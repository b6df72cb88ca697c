"""AveragePool in the chain walk (one look-through entry): it averages each channel's own plane, so a per-channel
scale crosses it always, and a shift only when every divisor counts real elements alone (no padding and
ceil_mode=0, or count_include_pad=0). CoAtNet's BN -> AvgPool2d(2) -> Conv 1x1 folds backward through it."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, fold_and_compare, op_types

C, K = 6, 4


def _pool(source, output, **attributes):
    attributes.setdefault("kernel_shape", [2, 2])
    return helper.make_node("AveragePool", [source], [output], name="pool", **attributes)


def _bn_pool_conv(*, shift=True, seed=0, **pool):
    """x -> BN -> AveragePool(**pool) -> Conv 1x1 (unpadded) -> y."""
    rng = np.random.default_rng(seed)
    initializers = bn_parameters(C, rng, "bn") + [
        numpy_helper.from_array(rng.normal(0, 0.5, (K, C, 1, 1)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.5, K).astype(np.float32), "B")]
    if not shift:  # mean 0, bias 0: a BN whose shift is 0
        initializers[1] = numpy_helper.from_array(np.zeros(C, np.float32), "bn_bias")
        initializers[2] = numpy_helper.from_array(np.zeros(C, np.float32), "bn_mean")
    nodes = [bn_node("x", "b", "bn"), _pool("b", "p", **pool),
             helper.make_node("Conv", ["p", "W", "B"], ["y"], name="conv")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 8, 7])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "c", "h", "w"])], initializers)


@pytest.mark.parametrize("pool", [
    {}, {"strides": [2, 2]}, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [1, 1], "auto_pad": "SAME_UPPER", "count_include_pad": 1},
])
def test_bn_average_pool_conv_folds_backward_when_no_counted_zero_is_averaged(pool):
    folded, report = fold_and_compare(_bn_pool_conv(**pool), expect_folded=1)
    assert op_types(folded) == ["AveragePool", "Conv"]
    assert report.decisions[0].through == ["AveragePool"]


@pytest.mark.parametrize("pool, why", [
    ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}, "counts them"),
    ({"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "count_include_pad": 1}, "counts them"),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1, "count_include_pad": 1}, "ceil_mode=1"),
])
def test_a_counted_padded_zero_keeps_a_bn_with_a_shift_and_says_why(pool, why):
    model = _bn_pool_conv(**pool)
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0
    assert why in report.decisions[0].reason and "shift" in report.decisions[0].reason
    assert_same_outputs(model, folded)


def test_a_bn_without_shift_crosses_a_counted_zero_padding():
    """0 * s = 0: the scale alone commutes with a zero border even when it is counted."""
    model = _bn_pool_conv(shift=False, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    fold_and_compare(model, expect_folded=1)


def test_conv_average_pool_bn_folds_forward():
    rng = np.random.default_rng(4)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (C, 3, 3, 3)).astype(np.float32), "W")]
    initializers += bn_parameters(C, rng, "bn")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4),
             _pool("c", "p", strides=[2, 2]), bn_node("p", "y", "bn")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "c", "h", "w"])], initializers)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["Conv", "AveragePool"] and report.decisions[0].into_op == "Conv"


@pytest.mark.parametrize("standalone", [False, True])
def test_a_pool_read_by_a_bn_and_a_concat_is_nothing_the_conv_can_absorb(standalone):
    """DenseNet's transition: Conv -> AveragePool -> {next layer's BN, the Concat}. The walk crosses the pool to the
    Conv, which cannot absorb the BN (the pool's output is shared): kept with that reason, or Mul + Add when asked."""
    rng = np.random.default_rng(5)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (C, 3, 1, 1)).astype(np.float32), "W")]
    initializers += bn_parameters(C, rng, "bn")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"), _pool("c", "p", strides=[2, 2]),
             bn_node("p", "b", "bn"), helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("Concat", ["p", "r"], ["y"], name="concat", axis=1)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2 * C, 4, 4])], initializers)
    folded, report = bnfold.fold(model, standalone=standalone)
    assert report.decisions[0].folded == standalone
    if standalone:
        assert report.decisions[0].rule == "standalone"
    else:
        assert "also feeds concat" in report.decisions[0].reason
    assert_same_outputs(model, folded)
