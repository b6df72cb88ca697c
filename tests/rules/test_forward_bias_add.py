"""A per-channel bias Add between a producer and its BN (paddle2onnx, tf2onnx, TorchScript Linear without bias):
the chain walk folds the Add and the BN into the producer."""

import pytest

from bnfold import fold
from models import fixtures
from support import fold_and_compare, op_types


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("bias_shape", [(1, 8, 1, 1), (8, 1, 1), (1,)])
def test_conv_add_bn_folds_add_and_bn_into_the_producer(transpose, bias_shape):
    """The walk crosses the bias Add: both its constant and the BN end in the producer's weight and bias."""
    folded, report = fold_and_compare(fixtures.conv_add_bn(transpose=transpose, bias_shape=bias_shape),
                                      expect_folded=1)
    assert op_types(folded) == ["ConvTranspose" if transpose else "Conv"]
    assert report.decisions[0].rule == "forward" and report.decisions[0].through == ["Add"]


def test_bias_broadcasting_along_the_last_axis_is_not_a_channel_bias():
    # [1, 1, 1, 8] broadcasts over W, not over channels: folding it would be wrong.
    model = fixtures.conv_add_bn(bias_shape=(1, 1, 1, 6))
    _, report = fold(model)
    assert report.folded_count == 0
    assert "is not one value per channel of axis 1" in report.kept[0].reason
