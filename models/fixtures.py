"""Small ONNX models built with onnx.helper that exercise each folding rule and each refusal.

`python models/fixtures.py` writes them to models/fixtures/; the tests import the builders directly.
Every BN gets random, non-trivial statistics (mean away from 0, var away from 1): folding an untrained BN is
nearly the identity and would prove nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what onnxruntime 1.16+ loads


def tensor_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def bn_parameters(channels: int, rng: np.random.Generator, prefix: str, dtype=np.float32,
                  var_range=(0.3, 3.0)) -> List[onnx.TensorProto]:
    """gamma, beta, running mean, running var initializers named prefix_{scale,bias,mean,var}."""
    values = {
        "scale": rng.uniform(0.5, 2.0, channels) * rng.choice([-1, 1], channels),
        "bias": rng.normal(0, 1, channels),
        "mean": rng.normal(0, 1.5, channels),
        "var": rng.uniform(*var_range, channels),
    }
    return [numpy_helper.from_array(v.astype(dtype), f"{prefix}_{k}") for k, v in values.items()]


def bn_node(x: str, y: str, prefix: str, epsilon: float = 1e-5, **attributes) -> onnx.NodeProto:
    names = [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], name=prefix, epsilon=epsilon, **attributes)


def make_model(nodes, inputs, outputs, initializers=(), *, opset: int = OPSET, ir_version: int = IR_VERSION,
               name: str = "bnfold_fixture") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="bnfold-fixtures")
    model.ir_version = ir_version
    return model


def conv_bn(*, rank: int = 2, c_in: int = 4, c_out: int = 8, group: int = 1, kernel: int = 3, stride: int = 1,
            dilation: int = 1, pad: int = 1, auto_pad: Optional[str] = None, bias: bool = True, dtype=np.float32,
            size: int = 9, seed: int = 0, transpose: bool = False, var_range=(0.3, 3.0)) -> onnx.ModelProto:
    """x -> Conv (or ConvTranspose) -> BN -> y, with every Conv attribute a test may want to vary."""
    rng = np.random.default_rng(seed)
    if transpose:
        weight_shape = (c_in, c_out // group) + (kernel,) * rank
    else:
        weight_shape = (c_out, c_in // group) + (kernel,) * rank
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, weight_shape).astype(dtype), "W")]
    inputs = ["x", "W"]
    if bias:
        initializers.append(numpy_helper.from_array(rng.normal(0, 1, c_out).astype(dtype), "B"))
        inputs.append("B")
    attributes = {"group": group, "strides": [stride] * rank, "dilations": [dilation] * rank}
    if auto_pad:
        attributes["auto_pad"] = auto_pad
    else:
        attributes["pads"] = [pad] * (2 * rank)
    op = "ConvTranspose" if transpose else "Conv"
    nodes = [helper.make_node(op, inputs, ["conv_out"], name="conv", **attributes), bn_node("conv_out", "y", "bn")]
    initializers += bn_parameters(c_out, rng, "bn", dtype, var_range)
    x = helper.make_tensor_value_info("x", tensor_type(dtype), ["N", c_in] + [size] * rank)
    y = helper.make_tensor_value_info("y", tensor_type(dtype), None)
    model = make_model(nodes, [x], [y], initializers)
    return _with_inferred_output(model)


def gemm_bn(*, m_in: int = 6, n_out: int = 5, trans_a: int = 0, trans_b: int = 0, alpha: float = 1.0,
            beta: float = 1.0, bias_shape: Optional[Sequence[int]] = (5,), dtype=np.float32,
            seed: int = 0) -> onnx.ModelProto:
    """x -> Gemm(B, C) -> BN -> y; bias_shape None drops C, () makes it a scalar."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.5, (n_out, m_in) if trans_b else (m_in, n_out)).astype(dtype)
    initializers = [numpy_helper.from_array(weight, "B")]
    inputs = ["x", "B"]
    if bias_shape is not None:
        initializers.append(numpy_helper.from_array(rng.normal(0, 1, tuple(bias_shape)).astype(dtype), "C"))
        inputs.append("C")
    nodes = [helper.make_node("Gemm", inputs, ["gemm_out"], name="gemm", transA=trans_a, transB=trans_b,
                              alpha=alpha, beta=beta),
             bn_node("gemm_out", "y", "bn")]
    initializers += bn_parameters(n_out, rng, "bn", dtype)
    x_shape = [m_in, 3] if trans_a else [3, m_in]
    x = helper.make_tensor_value_info("x", tensor_type(dtype), x_shape)
    y = helper.make_tensor_value_info("y", tensor_type(dtype), [3, n_out])
    return make_model(nodes, [x], [y], initializers)


def matmul_bn(*, k: int = 6, n: int = 5, x_rank: int = 2, add_bias: bool = False, dtype=np.float32,
              seed: int = 0) -> onnx.ModelProto:
    """x -> MatMul(W[K, N]) [-> Add(b)] -> BN -> y (BatchNorm1d after Linear)."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (k, n)).astype(dtype), "W")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm_out"], name="matmul")]
    bn_input = "mm_out"
    if add_bias:
        initializers.append(numpy_helper.from_array(rng.normal(0, 1, n).astype(dtype), "b"))
        nodes.append(helper.make_node("Add", ["mm_out", "b"], ["add_out"], name="add"))
        bn_input = "add_out"
    channels = n if x_rank == 2 else 4
    nodes.append(bn_node(bn_input, "y", "bn"))
    initializers += bn_parameters(channels, rng, "bn", dtype)
    x_shape = ["N", k] if x_rank == 2 else ["N", 4, k]
    x = helper.make_tensor_value_info("x", tensor_type(dtype), x_shape)
    y = helper.make_tensor_value_info("y", tensor_type(dtype), None)
    return _with_inferred_output(make_model(nodes, [x], [y], initializers))


def conv_add_bn(*, transpose: bool = False, bias_shape=(1, 8, 1, 1), seed: int = 0) -> onnx.ModelProto:
    """x -> Conv/ConvTranspose (no bias) -> Add(constant bias) -> BN -> y, as paddle2onnx and tf2onnx emit."""
    rng = np.random.default_rng(seed)
    weight_shape = (4, 8, 3, 3) if transpose else (8, 4, 3, 3)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, weight_shape).astype(np.float32), "W"),
                    numpy_helper.from_array(rng.normal(0, 1, bias_shape).astype(np.float32), "b")]
    nodes = [helper.make_node("ConvTranspose" if transpose else "Conv", ["x", "W"], ["conv_out"], name="conv",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["conv_out", "b"], ["add_out"], name="add"),
             bn_node("add_out", "y", "bn")]
    initializers += bn_parameters(8, rng, "bn")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _with_inferred_output(make_model(nodes, [x], [y], initializers))


def conv_bn_bn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN -> BN: the chain must end as one Conv."""
    model = conv_bn(seed=seed)
    rng = np.random.default_rng(seed + 1)
    graph = model.graph
    graph.node[1].output[0] = "bn_out"
    graph.node.append(bn_node("bn_out", "y", "bn2"))
    graph.initializer.extend(bn_parameters(8, rng, "bn2"))
    return model


def shared_weight_convs(seed: int = 0) -> onnx.ModelProto:
    """Two Convs share one weight initializer; only the first is followed by a BN."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "W")]
    initializers += bn_parameters(4, rng, "bn")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             bn_node("c1", "y1", "bn"),
             helper.make_node("Conv", ["x", "W"], ["y2"], name="conv2", pads=[1, 1, 1, 1])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4, 5, 5]) for name in ("y1", "y2")]
    return make_model(nodes, [x], outputs, initializers)


def multi_consumer_conv(seed: int = 0) -> onnx.ModelProto:
    """The Conv output feeds the BN and a Relu: folding would change what the Relu sees, so the BN stays."""
    model = conv_bn(seed=seed)
    graph = model.graph
    graph.node.append(helper.make_node("Relu", ["conv_out"], ["side"], name="side_relu"))
    graph.output.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    return _with_inferred_output(model)


def training_mode_bn(seed: int = 0) -> onnx.ModelProto:
    """training_mode=1: BN normalizes with batch statistics and updates running ones; it must stay."""
    model = conv_bn(seed=seed)
    bn = model.graph.node[1]
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    bn.output.extend(["running_mean", "running_var"])
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, [8])
                              for name in ("running_mean", "running_var"))
    return model


def weight_as_input(seed: int = 0) -> onnx.ModelProto:
    """The Conv weight is a graph input with no default: not a constant, so the BN stays."""
    model = conv_bn(seed=seed, bias=False)
    weight = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("W", weight.data_type, list(weight.dims)))
    del model.graph.initializer[0]
    return model


def initializer_as_input(seed: int = 0, ir_version: int = IR_VERSION) -> onnx.ModelProto:
    """Every initializer also listed as a graph input: constants below IR 4, overridable defaults from IR 4 on."""
    model = conv_bn(seed=seed)
    model.ir_version = ir_version
    for tensor in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return model


def nonfinite_stats_bn(seed: int = 0) -> onnx.ModelProto:
    model = conv_bn(seed=seed)
    for tensor in model.graph.initializer:
        if tensor.name == "bn_var":
            values = numpy_helper.to_array(tensor).copy()
            values[0] = np.nan
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return model


def gemm_row_bias(seed: int = 0) -> onnx.ModelProto:
    """Gemm with a per-row [M, N] bias: cannot absorb a per-column BN."""
    return gemm_bn(bias_shape=(3, 5), seed=seed)


def standalone_bn(seed: int = 0) -> onnx.ModelProto:
    """A BN right after the graph input: nothing to fold into."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])
    return make_model([bn_node("x", "y", "bn")], [x], [y], bn_parameters(3, rng, "bn"))


def _with_inferred_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fill in the output shapes (the checker wants a shape on every graph output type)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {value.name: value for value in (*inferred.graph.value_info, *inferred.graph.output)}
    for output in model.graph.output:
        if not output.type.tensor_type.HasField("shape") and output.name in shapes:
            output.type.CopyFrom(shapes[output.name].type)
    return model


# The models `python models/fixtures.py` writes: name -> builder. Each exercises a rule or a refusal.
SHIPPED: Dict[str, callable] = {
    "conv_bn": conv_bn,
    "conv1d_bn": lambda: conv_bn(rank=1),
    "conv3d_depthwise_bn": lambda: conv_bn(rank=3, c_in=8, c_out=8, group=8, size=5),
    "conv_transpose_grouped_bn": lambda: conv_bn(transpose=True, c_in=4, c_out=8, group=2, stride=2),
    "conv_bn_bn": conv_bn_bn,
    "gemm_bn": lambda: gemm_bn(trans_b=1, alpha=0.5, beta=2.0),
    "matmul_bn": lambda: matmul_bn(add_bias=True),
    "conv_add_bn": conv_add_bn,
    "shared_weight_convs": shared_weight_convs,
    "refuse_multi_consumer": multi_consumer_conv,
    "refuse_training_mode": training_mode_bn,
    "refuse_weight_input": weight_as_input,
    "refuse_gemm_row_bias": gemm_row_bias,
    "refuse_standalone": standalone_bn,
}


def main(directory: Path = Path(__file__).resolve().parent / "fixtures") -> None:
    directory.mkdir(exist_ok=True)
    for name, build in SHIPPED.items():
        model = build()
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, directory / f"{name}.onnx")
        print(f"wrote {directory / (name + '.onnx')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "fixtures")
