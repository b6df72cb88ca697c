"""BatchNormalization across opsets: -1/-6 (is_test, consumed_inputs), -7/-9 (spatial), -14/-15 (training_mode,
T1/T2 parameter types), with models at opsets 6 to 21."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, version_converter

from bnfold import fold
from models import fixtures
from support import assert_same_outputs, fold_and_compare


def at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    model.opset_import[0].version = opset
    return model


@pytest.mark.parametrize("opset", [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21])
def test_conv_bn_folds_at_every_opset_onnxruntime_runs(opset):
    fold_and_compare(at_opset(fixtures.conv_bn(), opset), expect_folded=1)


@pytest.mark.parametrize("opset, attributes", [
    (6, {"is_test": 1}),
    (5, {"is_test": 1, "consumed_inputs": [0, 0, 0, 1, 1]}),  # BatchNormalization-1
])
def test_old_bn_with_is_test_folds_and_matches_after_upgrade(opset, attributes):
    model = at_opset(fixtures.conv_bn(bias=True), opset)
    model.graph.node[1].attribute.extend(helper.make_attribute(k, v) for k, v in attributes.items())
    folded, report = fold(model)
    assert report.folded_count == 1
    # ONNX Runtime runs opset 7 and later: compare both after the same upgrade.
    assert_same_outputs(version_converter.convert_version(model, 9), version_converter.convert_version(folded, 9))


def test_opset6_training_bn_with_statistics_outputs_stays():
    model = at_opset(fixtures.conv_bn(), 6)
    bn = model.graph.node[1]
    bn.output.extend(["mean_out", "var_out"])
    _, report = fold(model)
    assert report.folded_count == 0 and "training outputs" in report.kept[0].reason


@pytest.mark.parametrize("opset", [7, 9])
def test_spatial_zero_with_per_channel_parameters_stays(opset):
    """spatial=0 wants per-element parameters; ONNX Runtime rejects the original with [C] ones ("Invalid input
    scale"), so folding it would turn an invalid model into a valid one that computes something else."""
    model = at_opset(fixtures.conv_bn(), opset)
    model.graph.node[1].attribute.append(helper.make_attribute("spatial", 0))
    folded, report = fold(model)
    assert report.folded_count == 0 and "spatial=0" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_spatial_zero_with_per_element_parameters_stays():
    model = at_opset(fixtures.conv_bn(size=3, pad=1), 7)
    model.graph.node[1].attribute.append(helper.make_attribute("spatial", 0))
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        if tensor.name.startswith("bn_"):
            values = rng.uniform(0.5, 1.5, (8, 3, 3)).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    _, report = fold(model)
    assert report.folded_count == 0 and "spatial=0" in report.kept[0].reason


def test_opset15_float16_data_with_float32_statistics():
    model = at_opset(fixtures.conv_bn(dtype=np.float16), 15)
    for tensor in model.graph.initializer:
        if tensor.name in ("bn_mean", "bn_var"):
            values = numpy_helper.to_array(tensor).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    folded, report = fold_and_compare(model, expect_folded=1)
    assert folded.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
