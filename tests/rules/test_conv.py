import numpy as np
import pytest

from models import fixtures
from support import fold_and_compare, op_types


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds_every_rank_with_and_without_bias(rank, bias):
    model = fixtures.conv_bn(rank=rank, bias=bias, size=6 if rank == 3 else 9)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["Conv"]
    assert report.decisions[0].rule == "forward" and report.decisions[0].into == "conv"
    assert len(folded.graph.node[0].input) == 3  # a missing bias was created


@pytest.mark.parametrize("settings", [
    dict(group=2),
    dict(group=4, c_in=8, c_out=8),  # depthwise-like with channel multiplier 1 per group of 2
    dict(group=8, c_in=8, c_out=8),  # depthwise
    dict(group=4, c_in=4, c_out=8),  # depthwise with multiplier 2
    dict(stride=2),
    dict(dilation=2, pad=2),
    dict(pad=0),
    dict(auto_pad="SAME_UPPER"),
    dict(auto_pad="SAME_LOWER", stride=2),
    dict(auto_pad="VALID"),
    dict(kernel=1, pad=0),
])
def test_conv_bn_folds_any_conv_attributes(settings):
    fold_and_compare(fixtures.conv_bn(**settings), expect_folded=1)


def test_conv_bn_float16_folds_in_float64_and_reports_rounding():
    folded, report = fold_and_compare(fixtures.conv_bn(dtype=np.float16), expect_folded=1)
    assert folded.graph.initializer[0].data_type == fixtures.tensor_type(np.float16)
    assert 0 < report.max_rounding_error < 1e-2


def test_conv_bn_tiny_variance_is_exact():
    fold_and_compare(fixtures.conv_bn(var_range=(1e-6, 1e-5)), expect_folded=1)


def test_conv_bn_channel_mismatch_is_refused():
    model = fixtures.conv_bn()
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        if tensor.name.startswith("bn_"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor)[:4], tensor.name))
    from bnfold import fold

    _, report = fold(model)
    assert report.kept[0].reason.startswith("channel mismatch: Conv has 8 output channels, BN has 4")


def test_float16_weights_with_statistics_beyond_float16_are_refused():
    """BN parameters in float32 (opset 15 allows it) whose shift cannot be held by the float16 bias."""
    from onnx import numpy_helper

    from bnfold import fold

    model = fixtures.conv_bn(dtype=np.float16)
    model.opset_import[0].version = 15
    for tensor in model.graph.initializer:
        if tensor.name in ("bn_mean", "bn_var"):
            values = numpy_helper.to_array(tensor).astype(np.float32)
            if tensor.name == "bn_mean":
                values[0] = 1e6
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    folded, report = fold(model)
    assert report.folded_count == 0 and "overflow float16" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()
