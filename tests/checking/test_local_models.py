"""Whole models whose declarations the local check must not trust: `bnfold MODEL -o OUT` folds them with no flags,
exits 0, and the written model computes what the original does in ONNX Runtime."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from bnfold.cli import cli
from support import run


def conv_bn(name, source, out_channels, in_channels, rng, output=None):
    weight = rng.normal(0, 0.3, (out_channels, in_channels, 3, 3)).astype(np.float32)
    params = [rng.uniform(0.5, 2, out_channels), rng.normal(0, 1, out_channels), rng.normal(0, 1, out_channels),
              rng.uniform(0.5, 2, out_channels)]
    initializers = [numpy_helper.from_array(weight, f"{name}.w")]
    initializers += [numpy_helper.from_array(p.astype(np.float32), f"{name}.{key}")
                     for p, key in zip(params, ("s", "b", "m", "v"))]
    nodes = [helper.make_node("Conv", [source, f"{name}.w"], [f"{name}.c"], name=f"{name}.conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", [f"{name}.c", f"{name}.s", f"{name}.b", f"{name}.m",
                                                     f"{name}.v"], [output or f"{name}.y"], name=f"{name}.bn",
                              epsilon=1e-5, momentum=0.9)]
    return nodes, initializers


def paddle_style_model() -> onnx.ModelProto:
    """As older paddle2onnx exports declare them: input [-1, 3, 0, 0] (-1 unknown, 0 "free"), output [-1, -1, 6],
    intermediate value_info with -1 channels; opset 10, whose BatchNormalization carries a momentum attribute."""
    rng = np.random.default_rng(0)
    n1, i1 = conv_bn("a", "x", 8, 3, rng)
    n2, i2 = conv_bn("b", "a.r", 6, 8, rng)
    nodes = [*n1, helper.make_node("Relu", ["a.y"], ["a.r"]), *n2,
             helper.make_node("Transpose", ["b.y"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["out"])]
    shape = numpy_helper.from_array(np.array([0, -1, 6], np.int64), "shape")
    graph = helper.make_graph(nodes, "paddle", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                              [-1, 3, 0, 0])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [-1, -1, 6])],
                              [*i1, *i2, shape],
                              value_info=[helper.make_tensor_value_info("a.y", onnx.TensorProto.FLOAT,
                                                                        [-1, -1, 0, 0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], ir_version=6)


def zero_channel_model(out_channels: int, in_channels: int) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    nodes, initializers = conv_bn("z", "x", out_channels, in_channels, rng)
    nodes.append(helper.make_node("Relu", ["z.y"], ["out"]))
    graph = helper.make_graph(nodes, "zero", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                            [1, in_channels, 8, 8])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, out_channels, 8, 8])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def fold_with_cli(model, tmp_path):
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    result = CliRunner().invoke(cli, [str(source), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "local check failed" not in result.output and "internal error" not in result.output
    return onnx.load(target), result.output


def free_inputs(model):
    """A copy whose input dims are symbolic: ONNX Runtime holds a declared 0 to be a fixed size."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            dim.dim_param = f"d{axis}"
    return copy


def assert_same(original, folded, feeds):
    expected, actual = run(free_inputs(original), feeds), run(free_inputs(folded), feeds)
    for name, value in expected.items():
        assert actual[name].shape == value.shape
        np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(value).max(initial=0)))


def test_paddle_style_declarations_fold_with_no_flags(tmp_path):
    original = paddle_style_model()
    folded, output = fold_with_cli(original, tmp_path)
    assert "BatchNormalization" not in {node.op_type for node in folded.graph.node}
    assert "2 in float64" in output
    feeds = {"x": np.random.default_rng(2).normal(size=(2, 3, 12, 10)).astype(np.float32)}
    assert_same(original, folded, feeds)


@pytest.mark.parametrize("out_channels, in_channels", [(0, 3), (4, 0)], ids=["no-outputs", "no-inputs"])
def test_zero_channel_conv_folds_with_no_flags(tmp_path, out_channels, in_channels):
    original = zero_channel_model(out_channels, in_channels)
    folded, _ = fold_with_cli(original, tmp_path)
    assert "BatchNormalization" not in {node.op_type for node in folded.graph.node}
    assert_same(original, folded, {"x": np.ones((1, in_channels, 8, 8), np.float32)})


def test_a_fault_while_checking_one_fold_keeps_only_that_bn(tmp_path, monkeypatch):
    """The check of BN 'b.bn' raises: that BN stays with the reason, the other folds, the model verifies and is
    written (exit 0)."""
    import bnfold.checking.float64 as float64

    real = float64._judge

    def faulty(piece, *args, **kwargs):
        if piece.label.startswith("b.bn"):
            raise RuntimeError("boom")
        return real(piece, *args, **kwargs)

    monkeypatch.setattr(float64, "_judge", faulty)
    rng = np.random.default_rng(3)
    n1, i1 = conv_bn("a", "x", 8, 3, rng)
    n2, i2 = conv_bn("b", "a.y", 4, 8, rng, output="out")
    graph = helper.make_graph([*n1, *n2], "two", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", 1, [1, 4, 8, 8])], [*i1, *i2])
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(original, source)
    result = CliRunner().invoke(cli, [str(source), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "kept   b.bn" in result.output and "internal error in the local check: RuntimeError: boom" in result.output
    folded = onnx.load(target)
    assert [node.name for node in folded.graph.node if node.op_type == "BatchNormalization"] == ["b.bn"]
    assert_same(original, folded, {"x": np.random.default_rng(4).normal(size=(1, 3, 8, 8)).astype(np.float32)})
