"""sum_forward: BN(Conv_a(x) + Conv_b(y)) (pre-activation RegNet / Xception): every summed producer absorbs the
BN's scale and one the shift; checked in ONNX Runtime against the unfolded model. A sum of anything that is not
a producer (a residual connection) is no match; a shared branch or sum is refused with the reason."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, fold_and_compare, op_types

C = 6


def _sum_bn(op="Add", *, inputs=2, biases=(False, True), pooled=False, scaled=False, view=False, extra_reader=None,
            seed=0):
    """Convs on inputs x0, x1, ... (3x3 padded; with `pooled` the last reads a global average, giving [N, C, 1, 1]
    that the sum broadcasts), summed by `op`, [-> Reshape(0, C, -1) -> Reshape back] -> BN -> y."""
    rng = np.random.default_rng(seed)
    nodes, initializers, names = [], bn_parameters(C, rng, "bn"), []
    graph_inputs = []
    for number in range(inputs):
        source = f"x{number}"
        graph_inputs.append(helper.make_tensor_value_info(source, TensorProto.FLOAT, ["N", 3, 6, 6]))
        if pooled and number == inputs - 1:
            nodes.append(helper.make_node("GlobalAveragePool", [source], [f"g{number}"], name=f"gap{number}"))
            source = f"g{number}"
        initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, (C, 3, 3, 3)).astype(np.float32), f"W{number}"))
        conv_inputs = [source, f"W{number}"]
        if biases[number % len(biases)]:
            initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, C).astype(np.float32), f"B{number}"))
            conv_inputs.append(f"B{number}")
        nodes.append(helper.make_node("Conv", conv_inputs, [f"c{number}"], name=f"conv{number}", pads=[1] * 4))
        name = f"c{number}"
        if scaled and number == 0:
            initializers.append(numpy_helper.from_array(rng.uniform(0.5, 2, (C, 1, 1)).astype(np.float32), "m"))
            nodes.append(helper.make_node("Mul", [name, "m"], ["scaled"], name="mul"))
            name = "scaled"
        names.append(name)
    nodes.append(helper.make_node(op, names, ["s"], name="sum"))
    last = "s"
    if view:
        initializers += [numpy_helper.from_array(np.array([0, C, -1], np.int64), "flat"),
                         numpy_helper.from_array(np.array([0, C, 6, 6], np.int64), "back")]
        nodes += [helper.make_node("Reshape", ["s", "flat"], ["f"], name="flatten"),
                  helper.make_node("Reshape", ["f", "back"], ["u"], name="unflatten")]
        last = "u"
    nodes.append(bn_node(last, "y", "bn"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 6, 6])]
    if extra_reader is not None:
        nodes.append(helper.make_node("Relu", [extra_reader], ["z"], name="other"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    return make_model(nodes, graph_inputs, outputs, initializers)


@pytest.mark.parametrize("options", [
    {}, {"op": "Sub"}, {"op": "Sum", "inputs": 3}, {"biases": (False,)}, {"biases": (True,)}, {"pooled": True},
    {"scaled": True}, {"view": True}, {"op": "Sub", "scaled": True, "view": True},
])
def test_a_bn_after_a_sum_of_convs_folds_into_every_conv(options):
    model = _sum_bn(**options)
    folded, report = fold_and_compare(model, expect_folded=1)
    decision = report.decisions[0]
    assert decision.rule == "sum_forward" and decision.into_op == "+".join(["Conv"] * options.get("inputs", 2))
    assert "BatchNormalization" not in op_types(folded) and "Mul" not in op_types(folded)
    assert op_types(folded).count(options.get("op", "Add")) == 1  # the sum stays


@pytest.mark.parametrize("reader, why", [("c0", "also feeds"), ("s", "also feeds")])
def test_a_branch_or_sum_read_elsewhere_is_refused_with_the_reason(reader, why):
    model = _sum_bn(extra_reader=reader)
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0
    assert why in report.decisions[0].reason and "[sum_forward]" in report.decisions[0].reason
    assert_same_outputs(model, folded)


def test_a_residual_sum_is_no_match():
    """BN(Conv(relu(x)) + x): x is no producer, so the sum is a residual connection; the BN is kept as before."""
    rng = np.random.default_rng(1)
    initializers = bn_parameters(C, rng, "bn") + [
        numpy_helper.from_array(rng.normal(0, 0.5, (C, C, 3, 3)).astype(np.float32), "W")]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Add", ["c", "x"], ["s"], name="residual"), bn_node("s", "y", "bn")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 5, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 5, 5])], initializers)
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "sum_forward" not in report.decisions[0].reason
    assert "nothing to fold it into" in report.decisions[0].reason
    assert_same_outputs(model, folded)


def test_skip_conv_keeps_the_bn_and_names_the_rule():
    folded, report = bnfold.fold(_sum_bn(), skip="conv")
    assert report.folded_count == 0 and "'conv'" in report.decisions[0].reason
