"""Small ONNX models built with onnx.helper that exercise each folding rule and each refusal.

`python models/fixtures.py` writes them to models/fixtures/; the tests import the builders directly.
Every BN gets random, non-trivial statistics (mean away from 0, var away from 1): folding an untrained BN is
nearly the identity and would prove nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

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


def initializer_as_input(seed: int = 0, ir_version: int = IR_VERSION, names=None) -> onnx.ModelProto:
    """Every initializer (or those `names` lists) also a graph input: constants below IR 4, overridable defaults
    from IR 4 on (folded as constants by default when nearly all are, as old PyTorch exports list them)."""
    model = conv_bn(seed=seed)
    model.ir_version = ir_version
    for tensor in model.graph.initializer:
        if names is None or tensor.name in names:
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


def _zero_shift(initializers: List[onnx.TensorProto], prefix: str) -> None:
    """Set a BN's beta and running mean to 0, so its shift beta - mean * scale is exactly 0 (scale stays random)."""
    for tensor in initializers:
        if tensor.name in (f"{prefix}_bias", f"{prefix}_mean"):
            tensor.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(tensor)), tensor.name))


def bn_conv(*, rank: int = 2, c_in: int = 8, c_out: int = 6, group: int = 1, kernel: int = 1, stride: int = 1,
            pad: int = 0, auto_pad: Optional[str] = None, bias: bool = True, zero_shift: bool = False,
            size: int = 7, seed: int = 0) -> onnx.ModelProto:
    """x -> BN -> Conv -> y: BN before the conv, as pre-activation nets and DenseNet transitions have it."""
    rng = np.random.default_rng(seed)
    initializers = bn_parameters(c_in, rng, "bn")
    if zero_shift:
        _zero_shift(initializers, "bn")
    initializers.append(numpy_helper.from_array(
        rng.normal(0, 0.5, (c_out, c_in // group) + (kernel,) * rank).astype(np.float32), "W"))
    inputs = ["bn_out", "W"]
    if bias:
        initializers.append(numpy_helper.from_array(rng.normal(0, 1, c_out).astype(np.float32), "B"))
        inputs.append("B")
    attributes = {"group": group, "strides": [stride] * rank}
    if auto_pad:
        attributes["auto_pad"] = auto_pad
    else:
        attributes["pads"] = [pad] * (2 * rank)
    nodes = [bn_node("x", "bn_out", "bn"), helper.make_node("Conv", inputs, ["y"], name="conv", **attributes)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in] + [size] * rank)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _with_inferred_output(make_model(nodes, [x], [y], initializers))


def bn_gemm(*, k: int = 6, n: int = 5, m: int = 3, trans_a: int = 0, trans_b: int = 0, alpha: float = 1.0,
            beta: float = 1.0, bias_shape: Optional[Sequence[int]] = (5,), seed: int = 0) -> onnx.ModelProto:
    """x -> BN (BatchNorm1d) -> Gemm(B, C) -> y; bias_shape None drops C, () makes it a scalar. With transA=1
    x is [K, M] and BN normalizes its M columns."""
    rng = np.random.default_rng(seed)
    x_shape = [k, m] if trans_a else [m, k]
    initializers = bn_parameters(x_shape[1], rng, "bn")
    initializers.append(numpy_helper.from_array(
        rng.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(np.float32), "B"))
    inputs = ["bn_out", "B"]
    if bias_shape is not None:
        initializers.append(numpy_helper.from_array(rng.normal(0, 1, tuple(bias_shape)).astype(np.float32), "C"))
        inputs.append("C")
    nodes = [bn_node("x", "bn_out", "bn"),
             helper.make_node("Gemm", inputs, ["y"], name="gemm", transA=trans_a, transB=trans_b, alpha=alpha,
                              beta=beta)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    return make_model(nodes, [x], [y], initializers)


def bn_matmul(*, k: int = 6, n: int = 5, x_rank: int = 2, consumers: int = 1, seed: int = 0) -> onnx.ModelProto:
    """x -> BN -> MatMul(W[K, N]) -> Relu -> y (per consumer): BatchNorm1d before a bias-free Linear."""
    rng = np.random.default_rng(seed)
    channels = k if x_rank == 2 else 4
    initializers = bn_parameters(channels, rng, "bn")
    nodes = [bn_node("x", "bn_out", "bn")]
    for index in range(consumers):
        initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, (k, n)).astype(np.float32), f"W{index}"))
        nodes.append(helper.make_node("MatMul", ["bn_out", f"W{index}"], [f"mm{index}"], name=f"matmul{index}"))
    nodes += [helper.make_node("Relu", [f"mm{index}"], [f"y{index}"], name=f"relu{index}")
              for index in range(consumers)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k] if x_rank == 2 else ["N", 4, k])
    outputs = [helper.make_tensor_value_info(f"y{index}", TensorProto.FLOAT, None) for index in range(consumers)]
    return _with_inferred_output(make_model(nodes, [x], outputs, initializers))


def bn_two_consumers(second: str = "Relu", seed: int = 0) -> onnx.ModelProto:
    """x -> BN -> {1x1 Conv, `second`}: "Conv" is a 1x1 Conv sharing the first one's weight, "Relu" cannot absorb
    a BN, so then neither consumer may fold."""
    rng = np.random.default_rng(seed)
    initializers = bn_parameters(4, rng, "bn")
    initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32), "W"))
    nodes = [bn_node("x", "bn_out", "bn"), helper.make_node("Conv", ["bn_out", "W"], ["y1"], name="conv1")]
    if second == "Conv":
        nodes.append(helper.make_node("Conv", ["bn_out", "W"], ["y2"], name="conv2"))
    else:
        nodes.append(helper.make_node(second, ["bn_out"], ["y2"], name=second.lower()))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y1", "y2")]
    return _with_inferred_output(make_model(nodes, [x], outputs, initializers))


def densenet_block(seed: int = 0) -> onnx.ModelProto:
    """A DenseNet-style dense layer and transition on concatenated features, with intermediate shapes declared
    (as exporters write them):

        cat = Concat(x, Conv3x3(x))
        BN1(cat) -> Relu -> Conv1x1 -> BN2 -> Relu -> Conv3x3(pad 1) -> y1   (BN1 cannot cross the Relu: standalone;
                                                                          BN2 folds into the Conv1x1 before it)
        BN3(cat) -> Conv1x1 -> y2                                            (BN3 folds backward into the conv)
    """
    rng = np.random.default_rng(seed)

    def weight(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.4, shape).astype(np.float32), name)

    initializers = [weight("W0", (8, 8, 3, 3)), weight("W1", (12, 16, 1, 1)), weight("W2", (4, 12, 3, 3)),
                    weight("W3", (6, 16, 1, 1))]
    initializers += bn_parameters(16, rng, "bn1") + bn_parameters(12, rng, "bn2") + bn_parameters(16, rng, "bn3")
    nodes = [
        helper.make_node("Conv", ["x", "W0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["x", "c0"], ["cat"], name="concat", axis=1),
        bn_node("cat", "n1", "bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W1"], ["c1"], name="conv1"),
        bn_node("c1", "n2", "bn2"),
        helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W2"], ["y1"], name="conv2", pads=[1, 1, 1, 1]),
        bn_node("cat", "n3", "bn3"),
        helper.make_node("Conv", ["n3", "W3"], ["y2"], name="conv3"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 6, 6])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y1", "y2")]
    return _with_value_info(make_model(nodes, [x], outputs, initializers))


def frozen_bn_stem(*, steps: Sequence[Tuple[str, bool]] = (("Mul", False), ("Add", False)),
                   constant_shape: Optional[Sequence[int]] = None, seed: int = 0) -> onnx.ModelProto:
    """A detection-model stem with torchvision's FrozenBatchNorm2d exported as elementwise ops:
    x -> Conv7x7/2 (no bias) -> steps -> Relu -> MaxPool -> y. Each step is (op, constant_first), its constant
    random per channel, shaped [1, C, 1, 1] unless `constant_shape` says otherwise."""
    rng = np.random.default_rng(seed)
    channels = 8
    shape = tuple(constant_shape) if constant_shape is not None else (1, channels, 1, 1)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.3, (channels, 3, 7, 7)).astype(np.float32), "W")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["conv_out"], name="conv", strides=[2, 2], pads=[3, 3, 3, 3])]
    data = "conv_out"
    for index, (op, constant_first) in enumerate(steps):
        magnitude = rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)
        values = magnitude if op in ("Mul", "Div") else rng.normal(0, 1, shape)
        initializers.append(numpy_helper.from_array(values.astype(np.float32), f"frozen_{index}"))
        operands = [f"frozen_{index}", data] if constant_first else [data, f"frozen_{index}"]
        nodes.append(helper.make_node(op, operands, [f"step{index}"], name=f"{op.lower()}{index}"))
        data = f"step{index}"
    nodes += [helper.make_node("Relu", [data], ["relu_out"], name="relu"),
              helper.make_node("MaxPool", ["relu_out"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                               pads=[1, 1, 1, 1])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _with_inferred_output(make_model(nodes, [x], [y], initializers))


def standalone_input_bn(seed: int = 0) -> onnx.ModelProto:
    """A BN normalizing the raw input, then a padded Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: the
    padding keeps BN's shift out of the conv, so the BN has no neighbour to fold into."""
    rng = np.random.default_rng(seed)
    initializers = bn_parameters(3, rng, "bn") + [
        numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.4, (8, 4)).astype(np.float32), "fc_W"),
        numpy_helper.from_array(rng.normal(0, 1, 4).astype(np.float32), "fc_b")]
    nodes = [bn_node("x", "normalized", "bn"),
             helper.make_node("Conv", ["normalized", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_W", "fc_b"], ["y"], name="fc")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return make_model(nodes, [x], [y], initializers)


def conv_reshape_bn(*, between: str = "Reshape", target: Sequence[int] = (0, 8, -1), axis: int = 1,
                    bn_channels: int = 8, batch="N", size: int = 5, kernel: int = 3, pad: int = 1,
                    seed: int = 0) -> onnx.ModelProto:
    """x -> Conv (8 channels) -> Reshape(target) | Flatten(axis) | Identity -> BN(bn_channels) -> y, shapes
    declared. `batch` is the input's declared batch dim (a name or a number)."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 4, kernel, kernel)).astype(np.float32), "W"),
                    numpy_helper.from_array(rng.normal(0, 1, 8).astype(np.float32), "B")]
    initializers += bn_parameters(bn_channels, rng, "bn")
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["conv_out"], name="conv", pads=[pad] * 4)]
    if between == "Reshape":
        initializers.append(numpy_helper.from_array(np.array(target, np.int64), "target"))
        nodes.append(helper.make_node("Reshape", ["conv_out", "target"], ["moved"], name="reshape"))
    elif between == "Flatten":
        nodes.append(helper.make_node("Flatten", ["conv_out"], ["moved"], name="flatten", axis=axis))
    else:
        nodes.append(helper.make_node(between, ["conv_out"], ["moved"], name=between.lower()))
    nodes.append(bn_node("moved", "y", "bn"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _with_value_info(make_model(nodes, [x], [y], initializers))


def bn_after(op: str = "Relu", *, rank: int = 4, declare_shapes: bool = True, dtype=np.float32,
             seed: int = 0) -> onnx.ModelProto:
    """x -> `op` -> BN -> y, where `op` is no node a BN folds into: Relu, PRelu, MaxPool, Concat (of x with
    itself) or a residual Add (x + x). declare_shapes=False declares no intermediate shape and ends the graph
    with a Relu after the BN, so nothing declares BN's rank or dtype."""
    rng = np.random.default_rng(seed)
    channels = 6 if op == "Concat" else 3
    initializers = bn_parameters(channels, rng, "bn", dtype)
    spatial = [5] * (rank - 2)
    if op == "PRelu":
        initializers.append(numpy_helper.from_array(
            rng.uniform(0.1, 0.3, (3,) + (1,) * (rank - 2)).astype(dtype), "slope"))
        node = helper.make_node("PRelu", ["x", "slope"], ["h"], name="prelu")
    elif op == "Concat":
        node = helper.make_node("Concat", ["x", "x"], ["h"], name="concat", axis=1)
    elif op == "Add":
        node = helper.make_node("Add", ["x", "x"], ["h"], name="residual")
    elif op == "MaxPool":
        node = helper.make_node("MaxPool", ["x"], ["h"], name="pool", kernel_shape=[2] * (rank - 2))
    else:
        node = helper.make_node(op, ["x"], ["h"], name=op.lower())
    x = helper.make_tensor_value_info("x", tensor_type(dtype), ["N", 3] + spatial)
    y = helper.make_tensor_value_info("y", tensor_type(dtype), None)
    if declare_shapes:
        return _with_value_info(make_model([node, bn_node("h", "y", "bn")], [x], [y], initializers))
    nodes = [node, bn_node("h", "n", "bn"), helper.make_node("Relu", ["n"], ["y"], name="out_relu")]
    return _with_inferred_output(make_model(nodes, [x], [y], initializers))


def _at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    model.opset_import[0].version = opset
    return model


def _with_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Declare every intermediate and output shape that ONNX shape inference finds, as exporters do."""
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.value_info.extend(inferred.graph.value_info)
    return _with_inferred_output(model)


def _with_inferred_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fill in the output shapes (the checker wants a shape on every graph output type)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {value.name: value for value in (*inferred.graph.value_info, *inferred.graph.output)}
    for output in model.graph.output:
        if not output.type.tensor_type.HasField("shape") and output.name in shapes:
            output.type.CopyFrom(shapes[output.name].type)
    return model


def quantized_conv_bn(*, scale_shape=(8,), axis=0, block_size=0, reshape=False, opset=21, seed=0):
    """x -> Conv(DequantizeLinear(int8 W, scale, zero point) [-> Reshape]) -> BN -> y, as int8 exports write."""
    rng = np.random.default_rng(seed)
    data_shape = (8, 4 * 9) if reshape else (8, 4, 3, 3)
    data = rng.integers(-100, 100, data_shape).astype(np.int8)
    scale = rng.uniform(0.001, 0.02, scale_shape).astype(np.float32)
    zero_point = rng.integers(-3, 3, scale_shape).astype(np.int8)
    initializers = [numpy_helper.from_array(data, "Wq"), numpy_helper.from_array(scale, "Ws"),
                    numpy_helper.from_array(zero_point, "Wz")]
    attributes = {"axis": axis}
    if block_size:
        attributes["block_size"] = block_size
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wz"], ["W_dq"], name="dq", **attributes)]
    weight = "W_dq"
    if reshape:
        initializers.append(numpy_helper.from_array(np.array([8, 4, 3, 3], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["W_dq", "shape"], ["W"], name="reshape"))
        weight = "W"
    nodes += [helper.make_node("Conv", ["x", weight], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
              bn_node("conv_out", "y", "bn")]
    initializers += bn_parameters(8, rng, "bn")
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 5, 5])],
                               initializers, opset=opset)


def function_model(weights_inside: bool):
    """main: y = F(x) twice-called local function F(x[, W]) = BN(Conv(x, W)); W and BN params are Constant nodes
    inside the body, or W comes in as a function input."""
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "fW")
    params = bn_parameters(4, rng, "fbn")
    body = [helper.make_node("Constant", [], [t.name], value=t) for t in params]
    if weights_inside:
        body.append(helper.make_node("Constant", [], ["fW"], value=weight))
    body += [helper.make_node("Conv", ["a", "fW"], ["c"], name="fconv"), bn_node("c", "b", "fbn")]
    inputs = ["a"] if weights_inside else ["a", "fW"]
    function = helper.make_function("local", "ConvBn", inputs, ["b"], body, [helper.make_opsetid("", 17)])
    call_inputs = ["x"] if weights_inside else ["x", "W"]
    nodes = [helper.make_node("ConvBn", call_inputs, ["h"], domain="local"),
             helper.make_node("ConvBn", ["h"] + call_inputs[1:], ["y"], domain="local")]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
        [] if weights_inside else [numpy_helper.from_array(numpy_helper.to_array(weight), "W")])
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(function)
    return model


def constant_node_weights(seed: int = 0) -> onnx.ModelProto:
    """Conv+BN with every weight and BN parameter in a Constant node, as paddle2onnx writes them."""
    model = conv_bn(seed=seed)
    graph = model.graph
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer]
    del graph.initializer[:]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(constants + nodes)
    return model


def _conv_bn_layer(nodes, initializers, rng, x, name, c_in, c_out, *, kernel=3, stride=1, gain=1.0, relu=True,
                   bn_scale=None, bn_bias=None):
    """Append Conv(no bias) -> BN [-> Relu] to `nodes`; return the output name. `gain` scales gamma and beta, so
    activations grow by about that factor per layer; bn_scale/bn_bias override gamma/beta per channel."""
    weight = rng.normal(0, (2.0 / (c_in * kernel * kernel)) ** 0.5, (c_out, c_in, kernel, kernel))
    initializers.append(numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"))
    parameters = bn_parameters(c_out, rng, name)
    gamma, beta = (numpy_helper.to_array(t) * gain for t in parameters[:2])
    gamma = gamma if bn_scale is None else bn_scale
    beta = beta if bn_bias is None else bn_bias
    parameters[:2] = [numpy_helper.from_array(np.asarray(gamma, np.float32), f"{name}_scale"),
                      numpy_helper.from_array(np.asarray(beta, np.float32), f"{name}_bias")]
    initializers.extend(parameters)
    pad = kernel // 2
    nodes.append(helper.make_node("Conv", [x, f"{name}_w"], [f"{name}_conv"], name=f"{name}_conv",
                                  strides=[stride, stride], pads=[pad] * 4))
    nodes.append(bn_node(f"{name}_conv", f"{name}_bn", name))
    if not relu:
        return f"{name}_bn"
    nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_relu"], name=f"{name}_relu"))
    return f"{name}_relu"


def growing_activations_net(*, depth: int = 12, channels: int = 16, size: int = 16, gain: float = 2.5,
                            seed: int = 0) -> onnx.ModelProto:
    """A plain Conv -> BN -> Relu chain whose activations grow by ~`gain` per layer (peak ~1e5 at the default
    depth), then GlobalAveragePool -> Flatten -> Gemm logits: the float32 rounding of a correct fold grows with
    the activations, so a tolerance scaled by one peak hides a wrong late fold."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x, c_in = "x", 3
    for layer in range(depth):
        x = _conv_bn_layer(nodes, initializers, rng, x, f"l{layer}", c_in, channels, gain=gain)
        c_in = channels
    initializers.append(numpy_helper.from_array(rng.normal(0, 0.3, (10, channels)).astype(np.float32), "fc_w"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], name="fc", transB=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
               helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", channels, size, size])]
    return make_model(nodes, inputs, outputs, initializers)


def mixed_scale_head(*, scores: int = 4, boxes: int = 4, size: int = 12, box_scale: float = 1e3,
                     seed: int = 0) -> onnx.ModelProto:
    """A detection head whose one output mixes scales: channels [0, scores) are scores (~1), the rest box
    regressions (~box_scale), both from one Conv -> BN over a small Conv -> BN -> Relu backbone."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x = _conv_bn_layer(nodes, initializers, rng, "x", "stem", 3, 16)
    x = _conv_bn_layer(nodes, initializers, rng, x, "body", 16, 16, stride=2)
    channels = scores + boxes
    parameters = bn_parameters(channels, rng, "unused")
    gamma, beta = numpy_helper.to_array(parameters[0]).copy(), numpy_helper.to_array(parameters[1]).copy()
    gamma[scores:] *= box_scale
    beta[scores:] *= box_scale
    _conv_bn_layer(nodes, initializers, rng, x, "head", 16, channels, kernel=1, relu=False, bn_scale=gamma,
                   bn_bias=beta)
    nodes.append(helper.make_node("Identity", ["head_bn"], ["pred"], name="pred"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("pred", TensorProto.FLOAT, ["N", channels, size // 2, size // 2])]
    return make_model(nodes, inputs, outputs, initializers)


def text_recognizer(*, height: int = 48, channels: int = 8, classes: int = 12, seed: int = 0) -> onnx.ModelProto:
    """A text-recognition-style CNN on a `N x 3 x 48 x W` input (W dynamic): Conv -> BN -> Relu -> MaxPool twice,
    ReduceMean over the height, Transpose and MatMul to per-column class scores `N x W/4 x classes`."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x = _conv_bn_layer(nodes, initializers, rng, "x", "c1", 3, channels)
    nodes.append(helper.make_node("MaxPool", [x], ["p1"], name="p1", kernel_shape=[2, 2], strides=[2, 2]))
    x = _conv_bn_layer(nodes, initializers, rng, "p1", "c2", channels, channels)
    nodes.append(helper.make_node("MaxPool", [x], ["p2"], name="p2", kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("ReduceMean", ["p2"], ["columns"], name="height_mean", axes=[2], keepdims=0))
    nodes.append(helper.make_node("Transpose", ["columns"], ["sequence"], name="to_sequence", perm=[0, 2, 1]))
    initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, (channels, classes)).astype(np.float32),
                                                "classifier"))
    nodes.append(helper.make_node("MatMul", ["sequence", "classifier"], ["scores"], name="classifier"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, height, "W"])]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "T", classes])]
    return make_model(nodes, inputs, outputs, initializers)


def dynamic_detector(*, stages: int = 6, channels: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A detector on an `N x 3 x H x W` input (both dynamic) with an FPN-style top-down merge: the deepest feature
    (stride 2^stages) is upsampled x2 and concatenated with the one above it, so H and W must be multiples of 2^stages
    (64 by default: 32 fails, as real detectors fail on sizes their strides do not divide)."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x, c_in, features = "x", 3, []
    for stage in range(stages):
        x = _conv_bn_layer(nodes, initializers, rng, x, f"s{stage}", c_in, channels, stride=2)
        features.append(x)
        c_in = channels
    initializers.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales"))
    nodes.append(helper.make_node("Resize", [features[-1], "", "up_scales"], ["up"], name="up", mode="nearest"))
    nodes.append(helper.make_node("Concat", ["up", features[-2]], ["merged"], name="merge", axis=1))
    _conv_bn_layer(nodes, initializers, rng, "merged", "head", 2 * channels, 6, kernel=1, relu=False)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    outputs = [helper.make_tensor_value_info("head_bn", TensorProto.FLOAT, ["N", 6, "h", "w"])]
    return make_model(nodes, inputs, outputs, initializers)

CHAIN_KINDS = ("convtranspose_identity_add", "conv_cast_mul_identity_add", "gemm_reshape_sub_div")


def look_through_chain(kind: str, *, backward: bool = False, seed: int = 0) -> onnx.ModelProto:
    """A producer and a BN with a chain of look-through ops between them, as exporters leave them.

    Forward (producer -> chain -> BN):
      convtranspose_identity_add: ConvTranspose -> Identity -> Add(bias) -> Identity -> BN (paddle2onnx's PP-OCR)
      conv_cast_mul_identity_add: Conv -> Cast -> Mul(scale) -> Identity -> Add(shift) -> BN
      gemm_reshape_sub_div:       Gemm -> Reshape([0, C, 1, 1]) -> Sub(mean) -> Div(std) -> BN
    backward=True mirrors each (BN -> chain reversed -> reader); the first mirror's reader is a 1x1 Conv, since a
    ConvTranspose cannot absorb the shift the Add brings.
    """
    rng = np.random.default_rng(seed)
    c = 6
    per_channel = (1, c, 1, 1)
    constants = {
        "bias": rng.normal(0, 1, per_channel), "scale": rng.uniform(0.5, 2, (c, 1, 1)),
        "shift": rng.normal(0, 1, per_channel), "mean": rng.normal(0, 1, per_channel),
        "std": rng.uniform(0.5, 2, (c, 1, 1)),
    }
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in constants.items()]
    initializers += bn_parameters(c, rng, "bn")
    chain = {
        "convtranspose_identity_add": [("Identity", None), ("Add", "bias"), ("Identity", None)],
        "conv_cast_mul_identity_add": [("Cast", None), ("Mul", "scale"), ("Identity", None), ("Add", "shift")],
        "gemm_reshape_sub_div": [("Reshape", "to_4d"), ("Sub", "mean"), ("Div", "std")],
    }[kind]
    gemm = kind == "gemm_reshape_sub_div"
    if backward:
        chain = [(("Reshape", "to_2d") if op == "Reshape" else (op, constant)) for op, constant in reversed(chain)]
    if gemm:
        initializers.append(numpy_helper.from_array(np.array([0, c, 1, 1], np.int64), "to_4d"))
        initializers.append(numpy_helper.from_array(np.array([0, c], np.int64), "to_2d"))
    nodes = []
    current = "p" if not backward else "b"
    if backward:
        x_shape = ["N", c, 1, 1] if gemm else ["N", c, 5, 5]
        nodes.append(bn_node("x", "b", "bn"))
    elif gemm:
        initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, (4, c)).astype(np.float32), "W"))
        nodes.append(helper.make_node("Gemm", ["x", "W"], ["p"], name="producer"))
        x_shape, y_shape = ["N", 4], ["N", c, 1, 1]
    else:
        op = "ConvTranspose" if kind.startswith("convtranspose") else "Conv"
        shape = (4, c, 3, 3) if op == "ConvTranspose" else (c, 4, 3, 3)
        initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), "W"))
        nodes.append(helper.make_node(op, ["x", "W"], ["p"], name="producer", pads=[1, 1, 1, 1]))
        x_shape, y_shape = ["N", 4, 5, 5], ["N", c, 5, 5]
    for index, (op, constant) in enumerate(chain):
        attributes = {"to": TensorProto.FLOAT} if op == "Cast" else {}
        inputs = [current] + ([constant] if constant else [])
        nodes.append(helper.make_node(op, inputs, [f"t{index}"], name=f"{op.lower()}{index}", **attributes))
        current = f"t{index}"
    if not backward:
        nodes.append(bn_node(current, "y", "bn"))
    elif gemm:
        initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, (c, 4)).astype(np.float32), "W"))
        nodes.append(helper.make_node("Gemm", [current, "W"], ["y"], name="reader"))
        y_shape = ["N", 4]
    else:
        initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, (4, c, 1, 1)).astype(np.float32), "W"))
        nodes.append(helper.make_node("Conv", [current, "W"], ["y"], name="reader"))
        y_shape = ["N", 4, 5, 5]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializers)


def mixed_kernel_concat_bn(*, kernels=(3, 5, 7), channels=(4, 3, 5), seed: int = 0) -> onnx.ModelProto:
    """timm's MixedConv2d: parallel Convs with different kernels, each read only by one Concat along the channels,
    then a BN: x -> {Conv k x k}* -> Concat(axis=1) -> BN -> y."""
    rng = np.random.default_rng(seed)
    initializers, nodes, parts = [], [], []
    for index, (kernel, count) in enumerate(zip(kernels, channels)):
        initializers.append(numpy_helper.from_array(
            rng.normal(0, 0.5, (count, 4, kernel, kernel)).astype(np.float32), f"W{index}"))
        nodes.append(helper.make_node("Conv", ["x", f"W{index}"], [f"c{index}"], name=f"conv{index}",
                                      pads=[kernel // 2] * 4))
        parts.append(f"c{index}")
    total = sum(channels)
    initializers += bn_parameters(total, rng, "bn")
    nodes += [helper.make_node("Concat", parts, ["cat"], name="concat", axis=1), bn_node("cat", "y", "bn")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 9, 9])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", total, 9, 9])], initializers)


def exporter_initializer_inputs(*, layers: int = 4, channels: int = 16, size: int = 12,
                                seed: int = 0) -> onnx.ModelProto:
    """A small conv net as PyTorch 1.x exporters wrote it by default (keep_initializers_as_inputs): IR 4, opset 9,
    every initializer also a graph input after the image. Conv -> BN -> Relu `layers` times, then
    GlobalAveragePool -> Flatten -> Gemm, whose weights no fold touches."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x, c_in = "x", 3
    for layer in range(layers):
        x = _conv_bn_layer(nodes, initializers, rng, x, f"l{layer}", c_in, channels, stride=2 if layer == 1 else 1)
        c_in = channels
    initializers += [numpy_helper.from_array(rng.normal(0, 0.3, (10, channels)).astype(np.float32), "fc_w"),
                     numpy_helper.from_array(rng.normal(0, 0.3, 10).astype(np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])]
    return make_model(nodes, inputs, outputs, initializers, opset=9, ir_version=4)


def unsorted_graph(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN -> Relu twice, then an If whose taken branch folds a Conv -> BN on an outer-scope tensor, with the
    main graph's nodes out of topological order (ONNX Runtime runs it; onnx.checker does not; neither accepts a
    subgraph out of order). Sorted stably, the order is the one the builder wrote before scrambling it."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x = _conv_bn_layer(nodes, initializers, rng, "x", "l0", 3, 6)
    x = _conv_bn_layer(nodes, initializers, rng, x, "l1", 6, 6)
    initializers.append(numpy_helper.from_array(np.array(-1e9, np.float32), "floor"))
    initializers.append(numpy_helper.from_array(
        rng.normal(0, 0.4, (6, 6, 1, 1)).astype(np.float32), "branch_w"))
    initializers += bn_parameters(6, rng, "branch_bn")
    then_nodes = [helper.make_node("Conv", [x, "branch_w"], ["branch_conv"], name="branch_conv"),
                  bn_node("branch_conv", "branch_out", "branch_bn")]
    value = helper.make_tensor_value_info
    then_branch = helper.make_graph(then_nodes, "then", [], [value("branch_out", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Identity", [x], ["else_out"], name="else_identity")], "else",
                                    [], [value("else_out", TensorProto.FLOAT, None)])
    nodes += [helper.make_node("ReduceMean", [x], ["level"], name="level", keepdims=0),
              helper.make_node("Greater", ["level", "floor"], ["taken"], name="taken"),
              helper.make_node("If", ["taken"], ["y"], name="branch", then_branch=then_branch,
                               else_branch=else_branch)]
    # Scrambled: each layer's nodes reversed, and the If first.
    scrambled = [nodes[-1], *reversed(nodes[:3]), *reversed(nodes[3:6]), *nodes[6:-1]]
    model = make_model(scrambled, [value("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                       [value("y", TensorProto.FLOAT, [1, 6, 8, 8])], initializers)
    return model


def _branch_block(nodes, initializers, rng, x, name, channels, specs, *, identity="bn", sum_op="Add"):
    """Append parallel branches of `x`, each Conv(no bias) -> BN from a spec dict (kernel, stride, pads, group,
    dilation, c_out), plus an identity branch ("bn": BN(x); "affine": Mul + Add by per-channel constants; "plain":
    x itself; None: none), summed by a chain of Adds or one Sum; return the sum's name."""
    outputs = []
    for number, spec in enumerate(specs):
        kernel, group = spec.get("kernel", 3), spec.get("group", 1)
        c_out = spec.get("c_out", channels)
        branch = f"{name}_b{number}"
        weight = rng.normal(0, 0.5, (c_out, channels // group, kernel, kernel)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"{branch}_w"))
        pads = spec.get("pads", [kernel // 2] * 4)
        nodes.append(helper.make_node("Conv", [x, f"{branch}_w"], [f"{branch}_conv"], name=f"{branch}_conv",
                                      strides=[spec.get("stride", 1)] * 2, pads=pads, group=group,
                                      dilations=[spec.get("dilation", 1)] * 2))
        nodes.append(bn_node(f"{branch}_conv", f"{branch}_bn", f"{branch}_bn"))
        initializers.extend(bn_parameters(c_out, rng, f"{branch}_bn"))
        outputs.append(f"{branch}_bn")
    if identity == "bn":
        nodes.append(bn_node(x, f"{name}_id", f"{name}_id"))
        initializers.extend(bn_parameters(channels, rng, f"{name}_id"))
        outputs.append(f"{name}_id")
    elif identity == "affine":
        for op, values in (("Mul", rng.uniform(0.5, 2.0, channels)), ("Add", rng.normal(0, 1, channels))):
            initializers.append(numpy_helper.from_array(values.reshape(channels, 1, 1).astype(np.float32),
                                                        f"{name}_id_{op.lower()}_c"))
            source = x if op == "Mul" else f"{name}_id_mul"
            nodes.append(helper.make_node(op, [source, f"{name}_id_{op.lower()}_c"], [f"{name}_id_{op.lower()}"],
                                          name=f"{name}_id_{op.lower()}"))
        outputs.append(f"{name}_id_add")
    elif identity == "plain":
        outputs.append(x)
    if sum_op == "Sum":
        nodes.append(helper.make_node("Sum", outputs, [f"{name}_sum"], name=f"{name}_sum"))
        return f"{name}_sum"
    total = outputs[0]
    for number, output in enumerate(outputs[1:]):
        nodes.append(helper.make_node("Add", [total, output], [f"{name}_add{number}"], name=f"{name}_add{number}"))
        total = f"{name}_add{number}"
    return total


def branch_block(specs=({"kernel": 3}, {"kernel": 1}), *, channels: int = 8, size: int = 9, identity="bn",
                 sum_op: str = "Add", post_bn: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x -> parallel branches (see _branch_block) -> sum [-> BN] -> Relu -> y: one re-parameterizable block."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    total = _branch_block(nodes, initializers, rng, "x", "block", channels, specs, identity=identity, sum_op=sum_op)
    if post_bn:
        nodes.append(bn_node(total, "post_bn", "post_bn"))
        initializers.extend(bn_parameters(specs[0].get("c_out", channels), rng, "post_bn"))
        total = "post_bn"
    nodes.append(helper.make_node("Relu", [total], ["y"], name="relu"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    return _with_inferred_output(make_model(nodes, inputs, outputs, initializers))


def repvgg_block(seed: int = 0) -> onnx.ModelProto:
    """RepVGG: Conv3x3+BN + Conv1x1+BN + BN(x), summed by two Adds, then Relu; the train-time structure."""
    return branch_block(({"kernel": 3}, {"kernel": 1}), identity="bn", seed=seed)


def mobileone_block(*, channels: int = 8, k: int = 3, size: int = 9, seed: int = 0) -> onnx.ModelProto:
    """MobileOne: a depthwise stage (k parallel depthwise 3x3 Conv+BN, a depthwise 1x1 Conv+BN and BN(x), one Sum)
    -> Relu -> a pointwise stage (k parallel 1x1 Conv+BN and BN(x), Adds) -> Relu."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    depthwise = [{"kernel": 3, "group": channels}] * k + [{"kernel": 1, "group": channels}]
    x = _branch_block(nodes, initializers, rng, "x", "dw", channels, depthwise, sum_op="Sum")
    nodes.append(helper.make_node("Relu", [x], ["dw_relu"], name="dw_relu"))
    x = _branch_block(nodes, initializers, rng, "dw_relu", "pw", channels, [{"kernel": 1}] * k)
    nodes.append(helper.make_node("Relu", [x], ["y"], name="pw_relu"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    return _with_inferred_output(make_model(nodes, inputs, outputs, initializers))


def refuse_branch_stride(seed: int = 0) -> onnx.ModelProto:
    """Conv3x3 (stride 1, no padding) + Conv1x1 (stride 2): on a 4x4 input both give 2x2, but they sample different
    positions, so no one Conv computes the sum."""
    return branch_block(({"kernel": 3, "pads": [0] * 4}, {"kernel": 1, "stride": 2}), identity=None, size=4,
                        seed=seed)


def refuse_branch_padding(seed: int = 0) -> onnx.ModelProto:
    """Two 3x3 Conv branches, one centred (pads 1) and one shifted (pads 2 before, 0 after): same output size, but
    their windows together span 4 taps, more than the largest kernel."""
    return branch_block(({"kernel": 3}, {"kernel": 3, "pads": [2, 2, 0, 0]}), identity=None, seed=seed)

def token_linear_norm(*, tokens: int = 5, k: int = 4, c: int = 6, seed: int = 5) -> onnx.ModelProto:
    """timm LeViT's LinearNorm as TorchScript exports it: MatMul on [B, N, K] tokens -> Reshape [B*N, C] ->
    BatchNorm1d -> Reshape back to the MatMul's shape (read by a Shape node)."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(size=(k, c)).astype(np.float32), "W"),
                    numpy_helper.from_array(np.array([-1, c], np.int64), "flat"),
                    *bn_parameters(c, rng, "bn")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="linear"),
             helper.make_node("Shape", ["m"], ["m_shape"], name="shape"),
             helper.make_node("Reshape", ["m", "flat"], ["f"], name="flatten_tokens"),
             bn_node("f", "n", "bn"),
             helper.make_node("Reshape", ["n", "m_shape"], ["y"], name="unflatten")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", tokens, k])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", tokens, c])], initializers)


def bn_pool_linear_head(*, c: int = 6, classes: int = 3, seed: int = 6) -> onnx.ModelProto:
    """ConvMixer's head: BN -> GlobalAveragePool -> Flatten -> Gemm; averaging commutes with a per-channel map."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(size=(c, classes)).astype(np.float32), "W"),
                    numpy_helper.from_array(rng.normal(size=classes).astype(np.float32), "b"),
                    *bn_parameters(c, rng, "bn")]
    nodes = [bn_node("x", "n", "bn"),
             helper.make_node("GlobalAveragePool", ["n"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], name="head")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 7, 7])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], initializers)


def attention_without_bn(*, tokens: int = 5, d: int = 4, seed: int = 7) -> onnx.ModelProto:
    """Attention logits as timm's LeViT exports them with dynamo: (q @ k^T) * scale + bias. A MatMul whose right
    operand is computed at run time, then Mul and Add by constants: no BN at all, and none may be reported."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(np.array(d ** -0.5, np.float32), "scale"),
                    numpy_helper.from_array(rng.normal(size=(tokens, tokens)).astype(np.float32), "bias")]
    nodes = [helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 2, 1], name="transpose"),
             helper.make_node("MatMul", ["q", "k_t"], ["logits"], name="qk"),
             helper.make_node("Mul", ["logits", "scale"], ["scaled"], name="mul"),
             helper.make_node("Add", ["scaled", "bias"], ["y"], name="add")]
    shape = ["B", tokens, d]
    return make_model(nodes, [helper.make_tensor_value_info("q", TensorProto.FLOAT, shape),
                              helper.make_tensor_value_info("k", TensorProto.FLOAT, shape)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", tokens, tokens])], initializers)


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
    "bn_conv_backward": bn_conv,
    "bn_gemm_backward": lambda: bn_gemm(trans_b=1, alpha=0.5, beta=2.0),
    "densenet_block": densenet_block,
    "frozen_bn_stem": frozen_bn_stem,
    "standalone_input_bn": standalone_input_bn,
    "conv_reshape_bn": conv_reshape_bn,
    "quantized_conv_bn": quantized_conv_bn,
    "function_conv_bn": lambda: function_model(weights_inside=True),
    "constant_node_weights": constant_node_weights,
    "opset9_conv_bn": lambda: _at_opset(conv_bn(), 9),
    "growing_activations_net": growing_activations_net,
    "mixed_scale_head": mixed_scale_head,
    "text_recognizer_dynamic_width": text_recognizer,
    "detector_dynamic_hw": dynamic_detector,
    "exporter_initializer_inputs": exporter_initializer_inputs,
    "unsorted_graph": unsorted_graph,
    "mixed_kernel_concat_bn": mixed_kernel_concat_bn,
    "token_linear_norm": token_linear_norm,
    "bn_pool_linear_head": bn_pool_linear_head,
    "attention_without_bn": attention_without_bn,
    **{f"chain_{kind}": (lambda kind=kind: look_through_chain(kind)) for kind in CHAIN_KINDS},
    **{f"chain_{kind}_backward": (lambda kind=kind: look_through_chain(kind, backward=True))
       for kind in CHAIN_KINDS},
    "repvgg_block": repvgg_block,
    "mobileone_block": mobileone_block,
    "refuse_branch_stride": refuse_branch_stride,
    "refuse_branch_padding": refuse_branch_padding,
}

# Models onnx.checker refuses on purpose (ONNX Runtime runs them): bnfold repairs them before its own check.
CHECKER_REFUSES = {"unsorted_graph"}


def main(directory: Path = Path(__file__).resolve().parent / "fixtures") -> None:
    directory.mkdir(exist_ok=True)
    for name, build in SHIPPED.items():
        model = build()
        if name not in CHECKER_REFUSES:
            onnx.checker.check_model(model, full_check=True)
        onnx.save(model, directory / f"{name}.onnx")
        print(f"wrote {directory / (name + '.onnx')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "fixtures")
