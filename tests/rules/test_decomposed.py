import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import fold
from bnfold.rules.affine import compose_affine
from models import fixtures
from support import fold_and_compare, op_types


@pytest.mark.parametrize("op, data_first, expected", [
    ("Mul", True, lambda x, c: x * c),
    ("Add", False, lambda x, c: c + x),
    ("Sub", True, lambda x, c: x - c),
    ("Sub", False, lambda x, c: c - x),
    ("Div", True, lambda x, c: x / c),
])
def test_compose_affine_applies_the_op_to_the_running_map(op, data_first, expected):
    rng = np.random.default_rng(3)
    x, scale, shift, constant = rng.normal(size=(4, 3)), rng.normal(size=3), rng.normal(size=3), rng.normal(size=3)
    new_scale, new_shift = compose_affine(scale, shift, op, constant, data_first)
    np.testing.assert_allclose(x * new_scale + new_shift, expected(x * scale + shift, constant))


def test_constant_divided_by_data_is_not_affine():
    with pytest.raises(ValueError, match="not affine"):
        compose_affine(np.ones(2), np.zeros(2), "Div", np.ones(2), data_first=False)


@pytest.mark.parametrize("steps, constant_shape", [
    ((("Mul", False), ("Add", False)), None),  # FrozenBatchNorm2d: x * scale + bias
    ((("Add", False), ("Mul", False)), None),
    ((("Mul", True), ("Add", True)), None),  # constants first
    ((("Sub", False), ("Div", False)), None),  # (x - mean) / std
    ((("Sub", True), ("Mul", False)), None),  # c - x flips the sign
    ((("Mul", False), ("Add", False), ("Mul", False), ("Sub", False)), None),  # two in a row
    ((("Mul", False), ("Add", False)), (8, 1, 1)),
    ((("Mul", False), ("Add", False)), ()),  # scalars apply to every channel
])
def test_frozen_bn_chain_folds_into_the_conv(steps, constant_shape):
    model = fixtures.frozen_bn_stem(steps=steps, constant_shape=constant_shape)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["Conv", "Relu", "MaxPool"]
    assert report.decisions == []  # no BatchNormalization node: the chain is reported apart
    decision = report.decomposed[0]
    assert decision.rule == "decomposed" and decision.into == "conv"
    assert decision.output == f"step{len(steps) - 1}"
    assert len(folded.graph.initializer) == 2  # weight and created bias; the step constants are gone


def _linear_then_affine(op_type: str):
    """x -> Gemm / MatMul / ConvTranspose -> Mul(per-channel) -> Add(per-channel) -> y."""
    rng = np.random.default_rng(4)
    if op_type == "ConvTranspose":
        x_shape, y_shape, weight_shape, constant_shape = ["N", 4, 5, 5], ["N", 6, 7, 7], (4, 6, 3, 3), (1, 6, 1, 1)
    else:
        x_shape, y_shape, weight_shape, constant_shape = ["N", 4], ["N", 6], (4, 6), (6,)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, weight_shape).astype(np.float32), "W"),
                    numpy_helper.from_array(rng.uniform(0.5, 2, constant_shape).astype(np.float32), "s"),
                    numpy_helper.from_array(rng.normal(0, 1, constant_shape).astype(np.float32), "t")]
    nodes = [helper.make_node(op_type, ["x", "W"], ["lin"], name="linear"),
             helper.make_node("Mul", ["lin", "s"], ["scaled"], name="mul"),
             helper.make_node("Add", ["scaled", "t"], ["y"], name="add")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)
    return fixtures.make_model(nodes, [x], [y], initializers)


@pytest.mark.parametrize("op_type, expected_ops", [
    ("Gemm", ["Gemm"]),
    ("ConvTranspose", ["ConvTranspose"]),
    ("MatMul", ["MatMul", "Add"]),  # MatMul keeps its shift as an Add, as after a real BN
])
def test_other_linear_producers_absorb_the_chain(op_type, expected_ops):
    folded, _ = fold_and_compare(_linear_then_affine(op_type), expect_folded=1)
    assert op_types(folded) == expected_ops


def test_constant_along_another_axis_is_refused():
    model = fixtures.frozen_bn_stem(constant_shape=(1, 1, 1, 8))
    folded, report = fold(model)
    assert "Mul 'mul0' constant of shape [1, 1, 1, 8] is not one value per channel of axis 1 (rank 4)" in report.decomposed[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_conv_output_read_elsewhere_is_refused():
    model = fixtures.frozen_bn_stem()
    model.graph.output.append(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, ["N", 8, 8, 8]))
    folded, report = fold(model)
    assert "Conv 'conv' output 'conv_out' is also a graph output" in report.decomposed[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_division_by_zero_is_refused():
    model = fixtures.frozen_bn_stem(steps=(("Add", False), ("Div", False)))
    divisor = next(t for t in model.graph.initializer if t.name == "frozen_1")
    values = numpy_helper.to_array(divisor).copy()
    values[0, 2] = 0.0
    divisor.CopyFrom(numpy_helper.from_array(values, divisor.name))
    folded, report = fold(model)
    assert "Div 'div1' divides by a constant that contains 0" in report.decomposed[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("steps", [(("Mul", False),), (("Add", False),), (("Div", True), ("Add", False))])
def test_chains_that_are_no_decomposed_bn_are_left_alone_unreported(steps):
    """A lone scale or bias, or c / x, is no BN: no decision, no change."""
    model = fixtures.frozen_bn_stem(steps=steps)
    folded, report = fold(model)
    assert report.decisions == report.decomposed == [] and folded.SerializeToString() == model.SerializeToString()


def test_chain_stops_where_an_intermediate_is_shared():
    model = fixtures.frozen_bn_stem()
    model.graph.output.append(helper.make_tensor_value_info("step0", TensorProto.FLOAT, ["N", 8, 8, 8]))
    folded, report = fold(model)
    assert report.decisions == report.decomposed == [] and folded.SerializeToString() == model.SerializeToString()
