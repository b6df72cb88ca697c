"""Pad in the chain walk (one look-through entry): it pads the spatial axes, each element staying in its channel.
A zero border commutes with a per-channel scale but not a shift; reflect / edge borders copy values of the same
channel and commute with both; a border of another constant commutes with neither; padding the channel axis adds
channels. Each fold runs in ONNX Runtime against the original."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, fold_and_compare, op_types

PADS = [0, 0, 1, 2, 0, 0, 2, 1]  # H and W, begins then ends


def _bn_parameters(rng, c, shift):
    """BN parameters whose shift beta - mean * scale is zero unless `shift`."""
    parameters = bn_parameters(c, rng, "bn")
    if not shift:
        parameters[1] = numpy_helper.from_array(np.zeros(c, np.float32), "bn_bias")
        parameters[2] = numpy_helper.from_array(np.zeros(c, np.float32), "bn_mean")
    return parameters


def _pad(x, y, initializers, *, pads=PADS, mode="constant", value=None, opset=17):
    if opset < 11:
        attributes = {"pads": pads, "mode": mode} | ({"value": value} if value is not None else {})
        return helper.make_node("Pad", [x], [y], name="pad", **attributes)
    initializers.append(numpy_helper.from_array(np.array(pads, np.int64), "pads"))
    inputs = [x, "pads"]
    if value is not None:
        initializers.append(numpy_helper.from_array(np.array(value, np.float32), "pad_value"))
        inputs.append("pad_value")
    return helper.make_node("Pad", inputs, [y], name="pad", mode=mode)


def conv_pad_bn(*, shift=True, opset=17, **pad):
    """x [N, 4, 5, 5] -> Conv 3x3 -> Pad -> BN -> y."""
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "W")]
    initializers += _bn_parameters(rng, 6, shift)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             _pad("c", "p", initializers, opset=opset, **pad), bn_node("p", "y", "bn")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])], initializers,
                      opset=opset)


def bn_pad_conv(*, shift=True, **pad):
    """x [N, 6, 5, 5] -> BN -> Pad -> Conv 3x3 (unpadded) -> y."""
    rng = np.random.default_rng(1)
    initializers = _bn_parameters(rng, 6, shift) + [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 6, 3, 3)).astype(np.float32), "W")]
    nodes = [bn_node("x", "b", "bn"), _pad("b", "p", initializers, **pad),
             helper.make_node("Conv", ["p", "W"], ["y"], name="conv")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 5, 5])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], initializers)


@pytest.mark.parametrize("opset", [10, 17])
def test_a_zero_border_takes_a_scale(opset):
    folded, report = fold_and_compare(conv_pad_bn(shift=False, opset=opset), expect_folded=1)
    assert op_types(folded) == ["Conv", "Pad"] and report.decisions[0].through == ["Pad"]


def test_a_zero_border_refuses_a_shift():
    model = conv_pad_bn()
    folded, report = bnfold.fold(model, local_check=False)
    assert report.folded_count == 0
    assert "Pad 'pad' commutes with a per-channel scale but not a shift (its border of zeros would not receive " \
           "the shift)" in report.decisions[0].reason
    assert_same_outputs(model, folded)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_a_border_copied_from_the_channel_takes_scale_and_shift(mode):
    folded, _ = fold_and_compare(conv_pad_bn(mode=mode), expect_folded=1)
    assert op_types(folded) == ["Conv", "Pad"]


def test_cropping_takes_scale_and_shift():
    model = conv_pad_bn(pads=[0, 0, -1, 0, 0, 0, 0, -1])
    for dim in model.graph.output[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = 4
    folded, _ = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["Conv", "Pad"]


def test_a_border_of_another_constant_refuses_any_map():
    model = conv_pad_bn(shift=False, value=1.0)
    folded, report = bnfold.fold(model, local_check=False)
    assert report.folded_count == 0 and "does not commute with a per-channel scale (its border of 1 would be " \
                                       "neither scaled nor shifted)" in report.decisions[0].reason
    assert_same_outputs(model, folded)


def test_padding_the_channel_axis_is_refused():
    model = conv_pad_bn(shift=False, pads=[0, 1, 0, 0, 0, 1, 0, 0])
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 8
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 5
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 5
    for tensor in model.graph.initializer:
        if tensor.name.startswith("bn_"):
            values = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(np.concatenate([values, values[:2]]), tensor.name))
    folded, report = bnfold.fold(model, local_check=False)
    assert report.folded_count == 0 and "pads the channel axis 1, adding channels" in report.decisions[0].reason
    assert_same_outputs(model, folded)


@pytest.mark.parametrize("shift", [False, True])
def test_backward_through_a_zero_border_needs_a_zero_shift(shift):
    model = bn_pad_conv(shift=shift)
    folded, report = bnfold.fold(model)
    assert report.folded_count == (0 if shift else 1)
    if shift:  # the backward refusal, the most specific reason, comes first
        assert report.decisions[0].reason.startswith("Pad 'pad' commutes with a per-channel scale but not a shift "
                                                     "(its border of zeros would not receive the shift)")
    else:
        assert report.decisions[0].rule == "backward" and op_types(folded) == ["Pad", "Conv"]
    assert_same_outputs(model, folded)
