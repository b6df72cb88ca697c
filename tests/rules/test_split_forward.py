"""split_forward: Conv -> Split along the channels -> BN on one part (timm lambda layers): the producer's rows of
that part absorb the BN, the other parts are unchanged; checked in ONNX Runtime against the unfolded model."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, fold_and_compare, op_types


def _conv_split_bn(*, sizes=(3, 5), normed=(1,), form="input", opset=17, axis=1, bias=False, shared=False, seed=0):
    """x -> Conv(3x3) -> Split(axis, sizes given as `form`: "input", "attribute", "equal", "num_outputs") -> BN on
    the parts in `normed`, the others through Relu -> outputs y0, y1, ..."""
    rng = np.random.default_rng(seed)
    channels = sum(sizes)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (channels, 3, 3, 3)).astype(np.float32), "W")]
    conv_inputs = ["x", "W"]
    if bias:
        initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, channels).astype(np.float32), "B"))
        conv_inputs.append("B")
    nodes = [helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1] * 4)]
    parts = [f"p{number}" for number in range(len(sizes))]
    attributes = {"axis": axis}
    split_inputs = ["c"]
    if form == "input":
        initializers.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        split_inputs.append("sizes")
    elif form == "attribute":
        attributes["split"] = list(sizes)
    elif form == "num_outputs":
        attributes["num_outputs"] = len(sizes)
    nodes.append(helper.make_node("Split", split_inputs, parts, name="split", **attributes))
    outputs = []
    for number, part in enumerate(parts):
        if number in normed:
            initializers += bn_parameters(channels if axis == 2 else sizes[number], rng, f"bn{number}")
            nodes.append(bn_node(part, f"y{number}", f"bn{number}"))
        else:
            nodes.append(helper.make_node("Relu", [part], [f"y{number}"], name=f"relu{number}"))
        outputs.append(helper.make_tensor_value_info(f"y{number}", TensorProto.FLOAT, None))
    if shared:
        nodes.append(helper.make_node("Relu", ["c"], ["z"], name="other"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])], outputs,
                       initializers, opset=opset)
    for output in model.graph.output:
        output.type.tensor_type.elem_type = TensorProto.FLOAT
        output.type.tensor_type.shape.dim.add().dim_param = "N"
        for _ in range(3):
            output.type.tensor_type.shape.dim.add().dim_param = "?"
    return model


@pytest.mark.parametrize("options", [
    {}, {"normed": (0,)}, {"normed": (0, 1)}, {"bias": True}, {"sizes": (2, 4, 2), "normed": (1, 2)},
    {"form": "attribute", "opset": 11}, {"form": "equal", "sizes": (4, 4)}, {"axis": -3},
    {"form": "num_outputs", "opset": 18, "sizes": (4, 3)},
])
def test_a_bn_on_a_split_part_folds_into_that_part_of_the_conv(options):
    model = _conv_split_bn(**options)
    normed = options.get("normed", (1,))
    folded, report = fold_and_compare(model, expect_folded=len(normed))
    assert op_types(folded) == ["Conv", "Split"] + ["Relu"] * (len(options.get("sizes", (3, 5))) - len(normed))
    assert all(decision.rule == "split_forward" and decision.through == ["Split"] for decision in report.decisions)


@pytest.mark.parametrize("options, why", [
    ({"axis": 2, "sizes": (2, 3)}, "splits axis 2"),
    ({"shared": True}, "also feeds"),
])
def test_a_split_that_is_not_the_channels_or_a_shared_conv_is_refused(options, why):
    model = _conv_split_bn(**options)
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and why in report.decisions[0].reason, report.decisions[0].reason
    assert_same_outputs(model, folded)


def test_a_token_matmul_split_on_its_last_axis_then_transposed_folds():
    """MatMul [N, T, K] @ [K, 7] -> Split(axis -1, [3, 4]) -> part 1 -> Transpose(0, 2, 1) -> BatchNorm1d: the last
    4 columns absorb the scale, the shift becomes an Add after the MatMul (zero on the other columns)."""
    rng = np.random.default_rng(2)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (5, 7)).astype(np.float32), "W"),
                    numpy_helper.from_array(np.array([3, 4], np.int64), "sizes")] + bn_parameters(4, rng, "bn")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="linear"),
             helper.make_node("Split", ["m", "sizes"], ["a", "b"], name="split", axis=-1),
             helper.make_node("Transpose", ["b"], ["bt"], name="to_channels", perm=[0, 2, 1]),
             bn_node("bt", "y", "bn"), helper.make_node("Relu", ["a"], ["z"], name="relu")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 6, 3])], initializers)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert report.decisions[0].into_op == "MatMul" and "BatchNormalization" not in op_types(folded)


def _conv_slices_bn(ranges, *, normed=0, opset=17, axes=(1,), seed=0):
    """x -> Conv(3x3, 8 channels) -> one Slice per (begin, end) in `ranges` on `axes` -> BN on slice `normed`, Relu
    on the others."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "W")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4)]
    outputs = []
    for number, (begin, end) in enumerate(ranges):
        bounds = [f"s{number}_{what}" for what in ("starts", "ends", "axes")]
        for name, values in zip(bounds, ([begin] * len(axes), [end] * len(axes), list(axes))):
            initializers.append(numpy_helper.from_array(np.array(values, np.int64), name))
        nodes.append(helper.make_node("Slice", ["c", *bounds], [f"s{number}"], name=f"slice{number}"))
        if number == normed:
            channels = len(range(8)[begin:end])
            initializers += bn_parameters(channels, rng, "bn")
            nodes.append(bn_node(f"s{number}", f"y{number}", "bn"))
        else:
            nodes.append(helper.make_node("Relu", [f"s{number}"], [f"y{number}"], name=f"relu{number}"))
        outputs.append(helper.make_tensor_value_info(f"y{number}", TensorProto.FLOAT, ["N", "c", "h", "w"]))
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])], outputs,
                      initializers, opset=opset)


@pytest.mark.parametrize("ranges", [[(0, 3), (3, 8)], [(2, 5)], [(-3, 2**62), (0, 5)], [(0, 4), (4, 8), (5, 6)]])
def test_a_bn_on_a_channel_slice_folds_into_those_rows(ranges):
    folded, report = fold_and_compare(_conv_slices_bn(ranges), expect_folded=1)
    assert report.decisions[0].rule == "split_forward" and "BatchNormalization" not in op_types(folded)


@pytest.mark.parametrize("ranges, axes, why", [
    ([(0, 4), (2, 6)], (1,), "also reads channels (2, 6)"),
    ([(0, 4)], (2,), "not a channel range"),
])
def test_an_overlapping_slice_or_one_off_the_channels_is_refused(ranges, axes, why):
    model = _conv_slices_bn(ranges, axes=axes)
    if axes != (1,):  # slicing H keeps 8 channels: the BN has 8
        model = _conv_slices_bn([(0, 8)], axes=(2,))
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and why in report.decisions[0].reason, report.decisions[0].reason
    assert_same_outputs(model, folded)
