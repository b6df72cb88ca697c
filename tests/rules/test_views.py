"""Views between a producer and its BN (rules.views): Reshape / Flatten / Identity that keep every element in its
channel fold; ones that may move elements between channels are refused with the dims that show it."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import fold
from models import fixtures
from support import fold_and_compare, op_types


@pytest.mark.parametrize("settings", [
    dict(target=(0, 8, -1)),  # x.view(N, C, -1)
    dict(target=(0, 0, -1)),
    dict(target=(0, 8, 25)),
    dict(target=(0, 8, 25, 1)),
    dict(target=(0, -1, 25)),  # axis 1 inferred: BN's 8 parameters make it 8
    dict(target=(2, 8, -1), batch=2),  # a literal batch equal to the declared one
    dict(target=(-1, 8, 25)),  # trailing dims match the declared 5 x 5
    dict(target=(-1, 8, 5, 5)),
    dict(between="Identity"),
    dict(between="Flatten", size=5, kernel=5, pad=0),  # [N, 8, 1, 1] -> [N, 8]
    dict(between="Flatten", axis=-3, size=5, kernel=5, pad=0),
])
def test_bn_behind_a_channel_keeping_reshape_folds_into_the_conv(settings):
    folded, report = fold_and_compare(fixtures.conv_reshape_bn(**settings), expect_folded=1)
    assert op_types(folded) == ["Conv", settings.get("between", "Reshape")]
    assert folded.graph.node[1].output[0] == "y"
    assert report.decisions[0].rule == "forward" and report.decisions[0].into == "conv"


def _gemm_then(between: str, target=(0, 0, 1)):
    """x -> Gemm -> Reshape(target) | Identity -> BN -> y."""
    rng = np.random.default_rng(5)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 6)).astype(np.float32), "B"),
                    numpy_helper.from_array(np.array(target, np.int64), "target")]
    initializers += fixtures.bn_parameters(6, rng, "bn")
    inputs = ["gemm_out", "target"] if between == "Reshape" else ["gemm_out"]
    nodes = [helper.make_node("Gemm", ["x", "B"], ["gemm_out"], name="gemm"),
             helper.make_node(between, inputs, ["moved"], name="between"),
             fixtures.bn_node("moved", "y", "bn")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6, 1] if between == "Reshape" else [3, 6])
    return fixtures.make_model(nodes, [x], [y], initializers)


@pytest.mark.parametrize("between", ["Reshape", "Identity"])
def test_gemm_behind_a_reshape_folds(between):
    folded, _ = fold_and_compare(_gemm_then(between), expect_folded=1)
    assert op_types(folded) == ["Gemm", between]


@pytest.mark.parametrize("settings, bn_channels, reason", [
    (dict(target=(0, 2, -1)), 2, "Reshape 'reshape' may move elements out of their channel (dims [?, 8, 5, 5] -> [?, 2, 100]"),
    (dict(target=(-1, 8, 5), batch=2), 8,
     "Reshape 'reshape' may move elements out of their channel (dims [2, 8, 5, 5] -> [10, 8, 5]"),
    (dict(target=(2, 8, -1)), 8, "Reshape 'reshape' may move elements out of their channel (dims [?, 8, 5, 5] -> [2, 8, ?]"),  # batch undeclared
    (dict(between="Flatten", axis=2), 25, "Flatten 'flatten' may move elements out of their channel (dims [?, 8, 5, 5] -> [8x?, 25]"),
    (dict(between="Flatten", axis=1), 200, "Flatten 'flatten' may move elements out of their channel (dims [?, 8, 5, 5] -> [?, 200]"),
])
def test_reshape_that_moves_the_channel_axis_is_refused(settings, bn_channels, reason):
    model = fixtures.conv_reshape_bn(bn_channels=bn_channels, **settings)
    folded, report = fold(model)
    assert report.folded_count == 0 and reason in report.kept[0].reason, report.render()
    assert folded.SerializeToString() == model.SerializeToString()


def test_runtime_target_shape_is_refused():
    model = fixtures.conv_reshape_bn()
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "target"))
    model.graph.input.append(helper.make_tensor_value_info("target", TensorProto.INT64, [3]))
    _, report = fold(model)
    assert "Reshape 'reshape' target is not a constant: 'target' is a graph input" in report.kept[0].reason


@pytest.mark.parametrize("shared", ["conv_out", "moved"])
def test_shared_intermediate_is_refused(shared):
    model = fixtures.conv_reshape_bn()
    model.graph.output.append(helper.make_tensor_value_info(shared, TensorProto.FLOAT, None))
    folded, report = fold(model)
    assert f"output {shared!r} is also a graph output" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("axes", [[7], [2, 2], [-9]])
def test_unsqueeze_axes_out_of_range_or_repeated_are_a_refusal_not_a_crash(axes):
    """The dims code ran off its input (StopIteration) on such axes; an invalid node is a refusal with its axes."""
    from bnfold.rules.base import Refuse
    from bnfold.rules.views import Size, unsqueeze_dims

    node = helper.make_node("Unsqueeze", ["x"], ["y"], name="unsqueeze", axes=axes)
    with pytest.raises(Refuse, match="Unsqueeze 'unsqueeze' has axes"):
        unsqueeze_dims(node, None, [Size(2), Size(3)])
