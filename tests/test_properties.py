"""Property tests: random Conv / ConvTranspose / Gemm / MatMul + BN graphs fold to models with the same outputs.

Single-pattern graphs (2,200 per run in total) vary rank 1-3, groups (depthwise included), kernel, strides,
dilations, pads and auto_pad, output_padding, bias, transA/transB, alpha/beta, dtypes, and BN statistics over many
orders of magnitude (var down to 0, epsilon from 1e-5 to 0.1, gamma from 1e-3 to 1e3 and 0, either sign). Each
fold is compared with the original in ONNX Runtime with graph optimizations disabled (ORT would otherwise fuse
Conv+BN itself), to a tolerance derived from how large the numbers being rounded are (see `magnitude`).
Random multi-node graphs (chains, branches, shared weights, multi-consumer tensors, graph outputs in the middle)
check that the outputs are equal and that every BN is either folded or reported with a reason.

The examples are derandomized (a fixed sequence per test, no example database), so CI is reproducible and a
failure reproduces locally. BNFOLD_EXPLORE=N runs N times as many examples from a random seed, for exploration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import pytest
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import bnfold
from models.fixtures import make_model, tensor_type
from support import run

pytestmark = pytest.mark.slow  # thousands of random graphs: part of CI, not of the fast loop

EXPLORE = int(os.environ.get("BNFOLD_EXPLORE", "0"))


def property_settings(examples: int) -> settings:
    return settings(max_examples=examples * max(EXPLORE, 1), derandomize=not EXPLORE, database=None,
                    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Allowed error in units in the last place of the dtype, relative to a channel's magnitude bound (see
# `magnitude`). Correct folds measured up to 1 (float16), 2.8 (float32) and 2 (float64) over 6,000 examples; a wrong
# fold (wrong axis, wrong group layout, bias not scaled) is off by about the magnitude itself.
ROUNDING_ULPS = {np.float16: 4, np.float32: 8, np.float64: 8}


@dataclass
class Case:
    """A model x -> producer -> BN -> y, its input, the BN's output-channel axis and each channel's magnitude."""

    model: onnx.ModelProto
    x: np.ndarray
    magnitude: np.ndarray
    expected_into: str  # the op the BN folds into


@dataclass
class Statistics:
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float

    @property
    def scale(self) -> np.ndarray:
        return self.gamma / np.sqrt(self.var + self.epsilon)


@st.composite
def statistics(draw, channels: int, dtype) -> Statistics:
    """BN statistics whose magnitudes are drawn as powers of ten: extreme, but finite in the dtype after folding."""
    low_precision = dtype == np.float16
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gamma_exponent = draw(st.integers(-3, 1 if low_precision else 3))
    var_exponent = draw(st.integers(-2 if low_precision else -6, 4))
    mean_exponent = draw(st.integers(-3, 2 if low_precision else 3))
    gamma = rng.uniform(0.5, 1.0, channels) * 10.0 ** gamma_exponent * rng.choice([-1, 1], channels)
    if draw(st.booleans()):
        gamma[rng.integers(channels)] = 0.0
    var = rng.uniform(0.1, 1.0, channels) * 10.0 ** var_exponent
    if draw(st.booleans()):
        var[rng.integers(channels)] = 0.0  # epsilon alone keeps var + epsilon > 0
    mean = rng.normal(0, 1, channels) * 10.0 ** mean_exponent
    beta = rng.normal(0, 1, channels) * 10.0 ** draw(st.integers(-3, 2 if low_precision else 3))
    epsilon = draw(st.sampled_from([1e-5, 1e-3, 0.1] if low_precision else [1e-5, 1e-3, 0.1, 1e-9]))
    cast = [np.asarray(values, dtype).astype(np.float64) for values in (gamma, beta, mean, var)]
    return Statistics(*cast, epsilon=epsilon)


def bn_initializers(stats: Statistics, dtype) -> List[onnx.TensorProto]:
    values = {"scale": stats.gamma, "bias": stats.beta, "mean": stats.mean, "var": stats.var}
    return [numpy_helper.from_array(v.astype(dtype), f"bn_{k}") for k, v in values.items()]


def bn(x: str, stats: Statistics) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y"], name="bn",
                            epsilon=stats.epsilon)


def magnitude(stats: Statistics, weight_l1: np.ndarray, bias: np.ndarray, max_x: float) -> np.ndarray:
    """Per channel, a bound on the numbers that get rounded on either side of the fold: the BN's scale times
    (the sum of |weight * x| over the reduction, |bias|, |mean|), plus |beta|."""
    return np.abs(stats.scale) * (weight_l1 * max_x + np.abs(bias) + np.abs(stats.mean)) + np.abs(stats.beta)


def random_input(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    return rng.uniform(-1, 1, shape).astype(dtype)


def folded_peak(model: onnx.ModelProto) -> float:
    """The largest |value| the exact fold writes into the producer's weight and bias, computed from the model alone:
    each weight element times the BN scale of the output channel it feeds, and bias * scale + shift."""
    values = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    producer, bn_node = model.graph.node[0], model.graph.node[-1]
    gamma, beta, mean, var = (values[name] for name in bn_node.input[1:5])
    epsilon = helper.get_attribute_value(bn_node.attribute[0]) if bn_node.attribute else 1e-5
    scale = gamma / np.sqrt(var + epsilon)
    shift = beta - mean * scale
    attributes = {a.name: helper.get_attribute_value(a) for a in producer.attribute}
    weight = values[producer.input[1]]
    if producer.op_type == "Conv":
        channel = np.arange(weight.shape[0]).reshape((-1,) + (1,) * (weight.ndim - 1))
    elif producer.op_type == "ConvTranspose":  # W [C_in, C_out/group, k...]: row group g feeds channels g*C_out/group + j
        group = attributes.get("group", 1)
        rows, columns = np.arange(weight.shape[0]), np.arange(weight.shape[1])
        channel = ((rows // (weight.shape[0] // group))[:, None] * weight.shape[1] + columns[None, :]).reshape(
            weight.shape[:2] + (1,) * (weight.ndim - 2))
    elif producer.op_type == "Gemm" and attributes.get("transB", 0):
        channel = np.arange(weight.shape[0])[:, None]
    else:  # Gemm, MatMul: [K, N]
        channel = np.arange(weight.shape[1])[None, :]
    peak = float(np.max(np.abs(weight * scale[channel])))
    bias_names = [n.input[1] for n in model.graph.node if n.op_type == "Add"] or list(producer.input[2:3])
    bias = values[bias_names[0]].reshape(-1) if bias_names and bias_names[0] else np.zeros_like(scale)
    if producer.op_type == "Gemm":
        bias = bias * attributes.get("beta", 1.0)
    return max(peak, float(np.max(np.abs(bias * scale + shift))))


def check_case(case: Case, dtype) -> None:
    """Fold, then: the BN folded by the expected rule, the result passes onnx.checker and ORT gives the same y."""
    folded, report = bnfold.fold(case.model)
    [decision] = report.decisions
    if not decision.folded and dtype == np.float16 and folded_peak(case.model) > np.finfo(np.float16).max:
        # Extreme statistics can push a folded weight or bias past float16's range (computed here, independently
        # of bnfold): refusing is the right answer.
        assert "overflow float16" in decision.reason
        assert folded.SerializeToString() == case.model.SerializeToString()
        return
    assert decision.folded, decision.reason
    assert decision.rule == "forward" and decision.into_op == case.expected_into, report.render(verbose=True)
    onnx.checker.check_model(folded, full_check=True)
    assert "BatchNormalization" not in [node.op_type for node in folded.graph.node]
    expected, actual = run(case.model, {"x": case.x})["y"], run(folded, {"x": case.x})["y"]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    channel_shape = [1] * expected.ndim
    channel_shape[1] = -1
    ulp = np.finfo(dtype).eps
    tolerance = ROUNDING_ULPS[dtype] * ulp * case.magnitude.reshape(channel_shape) + np.finfo(dtype).tiny
    error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    worst = np.unravel_index(np.argmax(error - tolerance), error.shape)
    assert np.all(error <= tolerance), (
        f"error {error[worst]:.3g} > tolerance {np.broadcast_to(tolerance, error.shape)[worst]:.3g} at {worst}")


# --- Conv / ConvTranspose --------------------------------------------------------------------------------------


@st.composite
def conv_cases(draw, transpose: bool) -> tuple:
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    rank = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    c_in, c_out = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 3))
    kernel = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["pads", "SAME_UPPER", "SAME_LOWER", "VALID"] if not transpose else ["pads"]))
    # ONNX Runtime does not implement dilations with SAME_UPPER / SAME_LOWER.
    dilation = 1 if padding.startswith("SAME") else draw(st.integers(1, 2))
    extent = dilation * (kernel - 1) + 1
    size = draw(st.integers(extent, extent + (5 if rank < 3 else 2)))
    attributes = {"group": group, "strides": [stride] * rank, "dilations": [dilation] * rank,
                  "kernel_shape": [kernel] * rank}
    if padding == "pads":
        attributes["pads"] = [draw(st.integers(0, kernel - 1)) for _ in range(2 * rank)]
    else:
        attributes["auto_pad"] = padding
    if transpose and stride > 1:
        attributes["output_padding"] = [draw(st.integers(0, stride - 1)) for _ in range(rank)]
    has_bias = draw(st.booleans())
    stats = draw(statistics(c_out, dtype))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    shape = (c_in, c_out // group) if transpose else (c_out, c_in // group)
    weight = rng.normal(0, 0.5, shape + (kernel,) * rank).astype(dtype)
    bias = rng.normal(0, 1, c_out).astype(dtype) if has_bias else np.zeros(c_out, dtype)
    if transpose:
        # Output channel g * (c_out / group) + j reads column j of the weight rows of group g.
        per_group = weight.astype(np.float64).reshape(group, c_in // group, c_out // group, -1)
        weight_l1 = np.abs(per_group).sum(axis=(1, 3)).reshape(-1)
    else:
        weight_l1 = np.abs(weight.astype(np.float64)).reshape(c_out, -1).sum(axis=1)
    inputs = ["x", "W", "B"] if has_bias else ["x", "W"]
    initializers = [numpy_helper.from_array(weight, "W"), *bn_initializers(stats, dtype)]
    if has_bias:
        initializers.append(numpy_helper.from_array(bias, "B"))
    op = "ConvTranspose" if transpose else "Conv"
    nodes = [helper.make_node(op, inputs, ["conv_out"], name="conv", **attributes), bn("conv_out", stats)]
    batch = draw(st.integers(1, 2))
    x = helper.make_tensor_value_info("x", tensor_type(dtype), [batch, c_in] + [size] * rank)
    y = helper.make_tensor_value_info("y", tensor_type(dtype), None)
    model = _with_output_shape(make_model(nodes, [x], [y], initializers))
    case = Case(model, random_input(rng, [batch, c_in] + [size] * rank, dtype),
                magnitude(stats, weight_l1, bias.astype(np.float64), 1.0), "ConvTranspose" if transpose else "Conv")
    return case, dtype


def _with_output_shape(model: onnx.ModelProto) -> onnx.ModelProto:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.output[0].type.CopyFrom(inferred.graph.output[0].type)
    return model


@given(conv_cases(transpose=False))
@property_settings(800)
def test_conv_bn(drawn):
    check_case(*drawn)


@given(conv_cases(transpose=True))
@property_settings(600)
def test_conv_transpose_bn(drawn):
    check_case(*drawn)


# --- Gemm / MatMul ---------------------------------------------------------------------------------------------


@st.composite
def gemm_cases(draw) -> tuple:
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64]))
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    trans_a, trans_b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    alpha, beta = draw(st.sampled_from([1.0, 0.5, -2.0])), draw(st.sampled_from([1.0, 0.0, 2.5]))
    bias_shape = draw(st.sampled_from([None, (), (1,), (n,), (1, n)]))
    stats = draw(statistics(n, dtype))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weight = rng.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(dtype)
    initializers = [numpy_helper.from_array(weight, "B"), *bn_initializers(stats, dtype)]
    inputs = ["x", "B"]
    bias = np.zeros(n)
    if bias_shape is not None:
        c = rng.normal(0, 1, bias_shape).astype(dtype)
        initializers.append(numpy_helper.from_array(c, "C"))
        inputs.append("C")
        bias = beta * np.broadcast_to(c.astype(np.float64).reshape(-1) if c.ndim else c.astype(np.float64), (n,))
    weight_l1 = abs(alpha) * np.abs(weight.astype(np.float64)).sum(axis=1 if trans_b else 0)
    nodes = [helper.make_node("Gemm", inputs, ["gemm_out"], name="gemm", transA=trans_a, transB=trans_b,
                              alpha=alpha, beta=beta), bn("gemm_out", stats)]
    x_shape = [k, m] if trans_a else [m, k]
    x = helper.make_tensor_value_info("x", tensor_type(dtype), x_shape)
    y = helper.make_tensor_value_info("y", tensor_type(dtype), [m, n])
    case = Case(make_model(nodes, [x], [y], initializers), random_input(rng, x_shape, dtype),
                magnitude(stats, weight_l1, bias, 1.0), "Gemm")
    return case, dtype


@given(gemm_cases())
@property_settings(400)
def test_gemm_bn(drawn):
    check_case(*drawn)


@st.composite
def matmul_cases(draw) -> tuple:
    """MatMul(x[M, K], W[K, N]) [-> Add(b[N])] -> BN over N (BatchNorm1d after Linear)."""
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64]))
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    add_bias = draw(st.booleans())
    stats = draw(statistics(n, dtype))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weight = rng.normal(0, 0.5, (k, n)).astype(dtype)
    initializers = [numpy_helper.from_array(weight, "W"), *bn_initializers(stats, dtype)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm_out"], name="matmul")]
    bias = np.zeros(n, dtype)
    if add_bias:
        bias = rng.normal(0, 1, n).astype(dtype)
        initializers.append(numpy_helper.from_array(bias, "b"))
        nodes.append(helper.make_node("Add", ["mm_out", "b"], ["add_out"], name="add"))
    nodes.append(bn(nodes[-1].output[0], stats))
    x = helper.make_tensor_value_info("x", tensor_type(dtype), [m, k])
    y = helper.make_tensor_value_info("y", tensor_type(dtype), [m, n])
    case = Case(make_model(nodes, [x], [y], initializers), random_input(rng, (m, k), dtype),
                magnitude(stats, np.abs(weight.astype(np.float64)).sum(axis=0), bias.astype(np.float64), 1.0),
                "MatMul")
    return case, dtype


@given(matmul_cases())
@property_settings(400)
def test_matmul_bn(drawn):
    check_case(*drawn)


# --- random multi-node graphs ----------------------------------------------------------------------------------

CHANNELS, SIZE = 4, 5


@st.composite
def multi_node_graphs(draw) -> onnx.ModelProto:
    """x [1, 4, 5, 5] through 2-9 random steps (at least one BN); every tensor keeps shape [1, 4, 5, 5], so any step can read any
    earlier tensor (branches), a Conv can reuse an earlier Conv's weight (shared weights), a tensor can feed several
    nodes (multi-consumer) and an inner tensor can also be a graph output."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tensors, weights, nodes, initializers = ["x"], [], [], []

    def read() -> str:
        # Mostly the newest tensor (chains), sometimes any earlier one (branches, multi-consumer).
        return tensors[-1] if draw(st.integers(0, 3)) else draw(st.sampled_from(tensors))

    def add_bn(step: int) -> None:
        prefix = f"bn{step}"
        stats = {"scale": rng.uniform(0.5, 2, CHANNELS) * rng.choice([-1, 1], CHANNELS),
                 "bias": rng.normal(0, 1, CHANNELS), "mean": rng.normal(0, 1, CHANNELS),
                 "var": rng.uniform(0.3, 3, CHANNELS)}
        initializers.extend(numpy_helper.from_array(v.astype(np.float32), f"{prefix}_{k}") for k, v in stats.items())
        nodes.append(helper.make_node("BatchNormalization", [read(), *(f"{prefix}_{k}" for k in stats)],
                                      [f"t{step}"], name=prefix, epsilon=1e-5))

    steps = draw(st.integers(2, 9))
    for step in range(steps):
        kind = draw(st.sampled_from(["conv", "conv", "conv_transpose", "bn", "bn", "relu", "add"]))
        output = f"t{step}"
        if kind in ("conv", "conv_transpose"):
            kernel = draw(st.sampled_from([1, 3]))
            shared = [name for name, k, t in weights if k == kernel and t == kind]
            if shared and draw(st.booleans()):
                weight = draw(st.sampled_from(shared))
            else:
                weight = f"w{step}"
                initializers.append(numpy_helper.from_array(
                    rng.normal(0, 0.4, (CHANNELS, CHANNELS, kernel, kernel)).astype(np.float32), weight))
                weights.append((weight, kernel, kind))
            inputs = [read(), weight]
            if draw(st.booleans()):
                initializers.append(numpy_helper.from_array(rng.normal(0, 1, CHANNELS).astype(np.float32),
                                                            f"b{step}"))
                inputs.append(f"b{step}")
            op = "Conv" if kind == "conv" else "ConvTranspose"
            pad = (kernel - 1) // 2
            nodes.append(helper.make_node(op, inputs, [output], name=f"{kind}{step}", pads=[pad] * 4))
        elif kind == "bn":
            add_bn(step)
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [read()], [output], name=f"relu{step}"))
        else:
            nodes.append(helper.make_node("Add", [read(), draw(st.sampled_from(tensors))], [output], name=f"add{step}"))
        tensors.append(output)
    if not any(node.op_type == "BatchNormalization" for node in nodes):
        add_bn(steps)
        tensors.append(f"t{steps}")
    outputs = [tensors[-1]]
    if len(tensors) > 2 and draw(st.booleans()):
        outputs.append(draw(st.sampled_from(tensors[1:-1])))
    value_type = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,  # noqa: E731
                                                             [1, CHANNELS, SIZE, SIZE])
    return make_model(nodes, [value_type("x")], [value_type(name) for name in outputs], initializers)


@given(multi_node_graphs())
@property_settings(600)
def test_multi_node_graphs(model):
    """Outputs equal, and every BN has exactly one decision: folded, or kept with a reason (and still there)."""
    folded, report = bnfold.fold(model)
    onnx.checker.check_model(folded, full_check=True)
    bn_names = [node.name for node in model.graph.node if node.op_type == "BatchNormalization"]
    decisions: Dict[str, Optional[bnfold.BnDecision]] = {name: None for name in bn_names}
    for decision in report.decisions:
        if decision.node in decisions:
            assert decisions[decision.node] is None, f"two decisions for {decision.node}"
            decisions[decision.node] = decision
    for name, decision in decisions.items():
        assert decision is not None, f"BN {name} has no decision: {report.render(verbose=True)}"
        assert decision.folded or decision.reason, f"BN {name} kept without a reason"
    remaining = sorted(node.name for node in folded.graph.node if node.op_type == "BatchNormalization")
    assert remaining == sorted(name for name, d in decisions.items() if not d.folded)

    x = random_input(np.random.default_rng(0), (1, CHANNELS, SIZE, SIZE), np.float32)
    expected, actual = run(model, {"x": x}), run(folded, {"x": x})
    for name, reference in expected.items():
        scale = max(1.0, float(np.max(np.abs(reference))))
        np.testing.assert_allclose(actual[name], reference, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
