"""Quantized weights (DequantizeLinear feeding the weight): the per-output-channel scale absorbs the BN factor and
the integer weights stay untouched; a per-tensor scale is refused."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import fold
from models import fixtures
from support import fold_and_compare


def integer_weights(model):
    return numpy_helper.to_array([t for t in model.graph.initializer if t.name == "Wq"][0])


@pytest.mark.parametrize("settings", [
    dict(scale_shape=(8,), axis=0),
    dict(scale_shape=(8, 2, 3, 3), axis=1, block_size=2),  # blocks along input channels
    dict(scale_shape=(8,), axis=0, reshape=True),
])
def test_per_channel_quantized_conv_folds_into_the_scale(settings):
    model = fixtures.quantized_conv_bn(**settings)
    folded, report = fold_and_compare(model, expect_folded=1)
    np.testing.assert_array_equal(integer_weights(folded), integer_weights(model))
    assert [n.op_type for n in folded.graph.node][-1] == "Conv"


@pytest.mark.parametrize("settings, reason", [
    (dict(scale_shape=(), axis=0), "per-tensor scale; folding needs re-quantization"),
    (dict(scale_shape=(4,), axis=1), "scaled per axis 1, not per output channel"),
    (dict(scale_shape=(4, 4, 3, 3), axis=0, block_size=2), "blocks of 2 span several output channels"),
])
def test_quantized_weights_that_need_requantization_are_refused(settings, reason):
    model = fixtures.quantized_conv_bn(**settings)
    folded, report = fold(model)
    assert report.folded_count == 0 and reason in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_quantized_matmul_per_column_folds():
    rng = np.random.default_rng(1)
    initializers = [numpy_helper.from_array(rng.integers(-100, 100, (6, 5)).astype(np.int8), "Wq"),
                    numpy_helper.from_array(rng.uniform(0.01, 0.02, 5).astype(np.float32), "Ws")]
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "Ws"], ["W"], axis=1),
             helper.make_node("MatMul", ["x", "W"], ["mm"], name="matmul"), fixtures.bn_node("mm", "y", "bn")]
    initializers += fixtures.bn_parameters(5, rng, "bn")
    model = fixtures.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializers)
    fold_and_compare(model, expect_folded=1)
