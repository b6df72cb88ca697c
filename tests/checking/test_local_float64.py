"""The local check's float64 path: it sees wrong folds smaller than float32 rounding ("eps ignored"), passes
correct folds in every weight dtype, hands what it cannot bound to ONNX Runtime, and a fault judges one piece only.
Folded constants are computed here with plain numpy from the stored originals, independently of bnfold's rules."""

import ml_dtypes
import numpy as np
import pytest
from onnx import helper

import bnfold.checking.float64 as float64
import bnfold.checking.ort_pieces as ort_pieces
import bnfold.checking.reference_ops as reference_ops
from bnfold.checking.local import check_pieces
from bnfold.graph.pieces import Piece, PieceInput

OPSET = [helper.make_opsetid("", 17)]
EPS = 1e-5


def stats(channels, rng):
    """(scale, bias, mean, var) with var near 1, where dropping eps moves the map by ~5e-6."""
    return (rng.uniform(0.5, 2.0, channels), rng.normal(0, 1, channels), rng.normal(0, 1, channels),
            rng.uniform(0.5, 2.0, channels))


def folded(weight, bias, bn, dtype, eps, axis=0):
    """The fold of the stored constants, in float64, rounded once to `dtype`; eps=0 is the "eps ignored" bug."""
    stored = [np.asarray(a, dtype).astype(np.float64) for a in (weight, bias, *bn)]
    weight, bias, scale, beta, mean, var = stored
    multiplier = scale / np.sqrt(var + eps)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return (weight * multiplier.reshape(shape)).astype(dtype), ((bias - mean) * multiplier + beta).astype(dtype)


def bn_node(source):
    return helper.make_node("BatchNormalization", [source, "s", "bb", "m", "v"], ["y"], epsilon=EPS)


def bn_constants(bn, dtype):
    return {name: np.asarray(value, dtype) for name, value in zip(("s", "bb", "m", "v"), bn)}


def conv_bn(dtype=np.float32, eps=EPS, channels=32, in_channels=64, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, (2.0 / (in_channels * 9)) ** 0.5, (channels, in_channels, 3, 3))
    bias = rng.normal(0, 0.1, channels)
    bn = stats(channels, rng)
    new_weight, new_bias = folded(weight, bias, bn, dtype, eps)
    return Piece(
        "bn into conv", [PieceInput("x", np.dtype(dtype), (-1, in_channels, 0, 0))], ["y"],
        before=[helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), bn_node("c")],
        after=[helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        constants_before={"w": np.asarray(weight, dtype), "b": np.asarray(bias, dtype), **bn_constants(bn, dtype)},
        constants_after={"w": new_weight, "b": new_bias}, channel_axes={"y": 1})


def gemm_bn(dtype=np.float32, eps=EPS, features=256, out=64, seed=1):
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, features**-0.5, (out, features))
    bias = rng.normal(0, 0.1, out)
    bn = stats(out, rng)
    new_weight, new_bias = folded(weight, bias, bn, dtype, eps)
    return Piece(
        "bn into gemm", [PieceInput("x", np.dtype(dtype), (None, features))], ["y"],
        before=[helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), bn_node("g")],
        after=[helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        constants_before={"w": np.asarray(weight, dtype), "b": np.asarray(bias, dtype), **bn_constants(bn, dtype)},
        constants_after={"w": new_weight, "b": new_bias}, channel_axes={"y": 1})


def standalone_bn(dtype=np.float32, eps=EPS, channels=8, seed=2):
    """A BN with no producer to fold into, replaced by Mul + Add (Sub of the mean folded in)."""
    rng = np.random.default_rng(seed)
    bn = stats(channels, rng)
    scale, beta, mean, var = (np.asarray(a, dtype).astype(np.float64) for a in bn)
    multiplier = scale / np.sqrt(var + eps)
    return Piece(
        "standalone bn", [PieceInput("x", np.dtype(dtype), (1, channels, None, None))], ["y"],
        before=[bn_node("x")],
        after=[helper.make_node("Mul", ["x", "k"], ["t"]), helper.make_node("Add", ["t", "a"], ["y"])],
        constants_before=bn_constants(bn, dtype),
        constants_after={"k": multiplier.reshape(1, -1, 1, 1).astype(dtype),
                         "a": (beta - mean * multiplier).reshape(1, -1, 1, 1).astype(dtype)},
        channel_axes={"y": 1})


def check(*pieces, exact=True, opsets=OPSET):
    return check_pieces(pieces, opset_imports=opsets, ir_version=8, exact=exact)


@pytest.mark.parametrize("build", [conv_bn, gemm_bn, standalone_bn], ids=["conv", "gemm", "mul-add"])
def test_eps_ignored_is_caught_in_float64_though_float32_cannot_see_it(build):
    (exact,) = check(build(eps=0.0))
    assert exact.failed and exact.method == "float64", exact.reason
    assert exact.bound_ratio > 3  # not a borderline call: ~5e-6 against float32's ~6e-8 per weight
    assert 1e-7 < exact.max_error < 1e-4
    (runtime,) = check(build(eps=0.0), exact=False)
    assert runtime.passed  # ONNX Runtime's float32 noise is larger than the bug: why the float64 path exists


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64],
                         ids=["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("build", [conv_bn, gemm_bn, standalone_bn], ids=["conv", "gemm", "mul-add"])
def test_correct_folds_pass_in_every_weight_dtype(build, dtype):
    results = check(*[build(dtype=dtype, seed=seed) for seed in range(3)])
    for result in results:
        assert result.passed and result.method == "float64", result.reason
        assert result.bound_ratio < 0.5  # correct folds stay well inside their rounding bound


def test_float64_weights_still_catch_tiny_errors():
    piece = gemm_bn(dtype=np.float64)
    piece.constants_after["b"] = piece.constants_after["b"] * (1 + 1e-9)
    (result,) = check(piece)
    assert result.failed and result.method == "float64"


def test_probe_shapes_come_from_the_piece_not_the_declaration():
    """Declared (-1, 64, 0, 0): batch and spatial are free, channels from the weight; 16 values per channel."""
    (result,) = check(conv_bn())
    assert result.passed, result.reason
    batch, channels, height, width = result.shapes["x"]
    assert channels == 64 and height == width >= 4 and batch * height * width >= 16


def test_zero_channel_conv_passes():
    piece = conv_bn(channels=0)
    (result,) = check(piece)
    assert result.passed and result.max_error == 0.0, result.reason


def test_what_float64_cannot_bound_runs_in_onnx_runtime():
    """A Sigmoid after the fold (not a map whose rounding the magnitude model bounds) and a custom-domain op."""
    sigmoid = gemm_bn()
    sigmoid.before.append(helper.make_node("Sigmoid", ["y"], ["z"]))
    sigmoid.after.append(helper.make_node("Sigmoid", ["y"], ["z"]))
    sigmoid.outputs, sigmoid.channel_axes = ["z"], {"z": 1}
    custom = conv_bn()
    custom.before[1] = helper.make_node("MyBN", list(custom.before[1].input), ["y"], domain="custom.ops")
    wrong = gemm_bn()
    wrong.after.append(helper.make_node("Sigmoid", ["y"], ["z"]))
    wrong.before.append(helper.make_node("Sigmoid", ["y"], ["z"]))
    wrong.outputs, wrong.channel_axes = ["z"], {"z": 1}
    wrong.constants_after["b"] = wrong.constants_after["b"] + 1.0
    results = check(sigmoid, custom, wrong, opsets=OPSET + [helper.make_opsetid("custom.ops", 1)])
    assert [r.method for r in results[:1] + results[2:]] == ["ORT float32", "ORT float32"]
    assert results[0].passed and "Sigmoid" in results[0].notes[0]
    assert results[1].skipped is not None and "MyBN" in results[1].skipped
    assert results[2].failed


def test_onnx_reference_quirks_do_not_reject_a_correct_fold(monkeypatch):
    """If onnx.reference computes a side unlike ONNX Runtime, its verdict is not trusted: the piece is judged in
    ONNX Runtime. Simulated by an evaluator that gets BatchNormalization wrong."""
    real = reference_ops.BatchNormalization._run
    monkeypatch.setattr(reference_ops.BatchNormalization, "_run",
                        lambda self, x, *args, **kwargs: (real(self, x, *args, **kwargs)[0] * 1.01,))
    (result,) = check(conv_bn())
    assert result.passed and result.method == "ORT float32", result.reason
    assert "disagree" in result.notes[0]


@pytest.mark.parametrize("group, strides, pads, output_padding", [(1, [2, 2], [0, 0, 0, 0], [1, 1]),
                                                                   (4, [2, 1], [1, 0, 1, 1], [0, 0]),
                                                                   (8, [1, 1], [1, 1, 1, 1], [0, 0])])
def test_conv_transpose_in_float64_matches_onnx_runtime(group, strides, pads, output_padding):
    """bnfold's own ConvTranspose for onnx.reference (whose grouped one is wrong): a correct fold passes in
    float64, and ONNX Runtime computes the same map."""
    rng = np.random.default_rng(3)
    weight = rng.normal(0, 0.3, (8, 16 // group, 3, 3))
    bias = rng.normal(0, 0.1, 16)
    bn = stats(16, rng)
    # Output channel g * (16 / group) + j scales weight[group g's inputs, j].
    scale, beta, mean, var = (np.asarray(a, np.float32).astype(np.float64) for a in bn)
    multiplier = scale / np.sqrt(var + EPS)
    stored = np.asarray(weight, np.float32).astype(np.float64)
    columns = multiplier.reshape(group, 16 // group)[np.arange(8) // (8 // group)]
    new_weight = (stored * columns[:, :, None, None]).astype(np.float32)
    new_bias = ((np.asarray(bias, np.float32).astype(np.float64) - mean) * multiplier + beta).astype(np.float32)
    attributes = dict(group=group, strides=strides, pads=pads, output_padding=output_padding)
    piece = Piece(
        "bn into conv transpose", [PieceInput("x", np.dtype(np.float32), (None, 8, None, None))], ["y"],
        before=[helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], **attributes), bn_node("t")],
        after=[helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attributes)],
        constants_before={"w": np.asarray(weight, np.float32), "b": np.asarray(bias, np.float32),
                          **bn_constants(bn, np.float32)},
        constants_after={"w": new_weight, "b": new_bias}, channel_axes={"y": 1})
    (result,) = check(piece)
    assert result.passed and result.method == "float64" and not result.notes, result.reason
    evaluation = float64._Evaluation(piece, {"": 17})
    out = evaluation.run({"x": (1, 8, 5, 6)}, np.random.default_rng(0))
    for side in ("before", "after"):
        runtime = ort_pieces.run_side(piece, {"x": out["p/x"].astype(np.float32)}, side, opset_imports=OPSET,
                                      ir_version=8)["y"]
        np.testing.assert_allclose(out[side[0] + "/y"], runtime, rtol=1e-4, atol=1e-4)


def test_bn9_with_momentum_is_evaluated_in_inference_mode():
    """onnx.reference's own BatchNormalization-9 switches to training mode when momentum is set; bnfold's float64
    evaluation reads every BN as the fold does."""
    piece = conv_bn()
    piece.before[1].attribute.append(helper.make_attribute("momentum", 0.9))
    (result,) = check(piece, opsets=[helper.make_opsetid("", 10)])
    assert result.passed and result.method == "float64", result.reason


def test_a_fault_in_the_float64_path_judges_only_its_piece(monkeypatch):
    real = float64._judge

    def faulty(piece, *args, **kwargs):
        if piece.label == "faulty":
            raise RuntimeError("boom")
        return real(piece, *args, **kwargs)

    monkeypatch.setattr(float64, "_judge", faulty)
    pieces = [conv_bn(seed=1), gemm_bn(), conv_bn(seed=2)]
    pieces[1].label = "faulty"
    results = check(*pieces)
    assert [r.passed for r in results] == [True, False, True]
    assert results[1].failed and "internal error in the local check: RuntimeError: boom" in results[1].reason


def test_a_fault_in_the_onnx_runtime_path_judges_only_its_piece(monkeypatch):
    real = ort_pieces._Job.prepare

    def faulty(job):
        if job.piece.label == "faulty":
            raise ValueError("negative dimensions are not allowed")
        return real(job)

    monkeypatch.setattr(ort_pieces._Job, "prepare", faulty)
    pieces = [conv_bn(seed=1), gemm_bn(), conv_bn(seed=2)]
    pieces[1].label = "faulty"
    results = check(*pieces, exact=False)
    assert [r.passed for r in results] == [True, False, True]
    assert results[1].failed and "negative dimensions" in results[1].reason


def pool_linear(eps=EPS, channels=32, out=10, seed=4):
    """BN -> GlobalAveragePool -> Flatten -> Gemm, folded forward into the Gemm (a classifier head)."""
    rng = np.random.default_rng(seed)
    weight, bias = rng.normal(0, channels**-0.5, (out, channels)), rng.normal(0, 0.1, out)
    bn = stats(channels, rng)
    scale, beta, mean, var = (np.asarray(a, np.float32).astype(np.float64) for a in bn)
    multiplier = scale / np.sqrt(var + eps)
    stored = np.asarray(weight, np.float32).astype(np.float64)
    new_weight = (stored * multiplier[None, :]).astype(np.float32)
    new_bias = (np.asarray(bias, np.float32) + stored @ (beta - mean * multiplier)).astype(np.float32)
    head = [helper.make_node("GlobalAveragePool", ["n"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)]
    after = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), *head[1:]]
    return Piece(
        "bn into gemm (forward)", [PieceInput("x", np.dtype(np.float32), (None, channels, None, None))], ["y"],
        before=[helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["n"], epsilon=EPS), *head],
        after=after,
        constants_before={"w": np.asarray(weight, np.float32), "b": np.asarray(bias, np.float32),
                          **bn_constants(bn, np.float32)},
        constants_after={"w": new_weight, "b": new_bias}, channel_axes={"y": 1})


def quantized_conv_bn(eps=EPS, channels=16, in_channels=8, seed=5):
    """DequantizeLinear(int8 weight, per-channel scale) -> Conv -> BN, folded into the DequantizeLinear's scale."""
    rng = np.random.default_rng(seed)
    quantized = rng.integers(-127, 128, (channels, in_channels, 3, 3)).astype(np.int8)
    weight_scale = rng.uniform(0.001, 0.01, channels).astype(np.float32)
    bn = stats(channels, rng)
    scale, beta, mean, var = (np.asarray(a, np.float32).astype(np.float64) for a in bn)
    multiplier = scale / np.sqrt(var + eps)
    dequantize = helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["w"], axis=0)
    return Piece(
        "bn into quantized conv", [PieceInput("x", np.dtype(np.float32), (None, in_channels, None, None))], ["y"],
        before=[dequantize, helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), bn_node("c")],
        after=[dequantize, helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        constants_before={"q": quantized, "qs": weight_scale, "qz": np.zeros(channels, np.int8),
                          **bn_constants(bn, np.float32)},
        constants_after={"q": quantized, "qs": (weight_scale * multiplier).astype(np.float32),
                         "qz": np.zeros(channels, np.int8),
                         "b": (beta - mean * multiplier).astype(np.float32)},
        channel_axes={"y": 1})


@pytest.mark.parametrize("build", [pool_linear, quantized_conv_bn], ids=["pool-linear", "dequantized-weight"])
def test_means_of_probes_and_dequantized_weights_stay_in_float64(build):
    """A Gemm reading a mean of the probes, and a weight computed from int8 constants, are still bounded: correct
    folds pass, eps ignored fails, both in float64."""
    opsets = [helper.make_opsetid("", 19)]  # onnx.reference has DequantizeLinear from opset 19 on
    correct = check(*[build(seed=seed) for seed in range(3)], opsets=opsets)
    assert all(r.passed and r.method == "float64" and r.bound_ratio < 0.5 for r in correct), [r.reason for r in
                                                                                              correct]
    (wrong,) = check(build(eps=0.0), opsets=opsets)
    assert wrong.failed and wrong.method == "float64", wrong.reason


def test_ops_onnx_reference_lacks_at_the_opset_run_in_onnx_runtime():
    (result,) = check(quantized_conv_bn())  # DequantizeLinear-13: not in onnx.reference 1.23
    assert result.passed and result.method == "ORT float32", result.reason
    assert "onnx.reference cannot evaluate" in result.notes[0]


def test_declared_spatial_sizes_are_not_needed_unless_the_piece_needs_them():
    """A Conv's declared 224x224 input is probed at a size its kernel fits (the map is the same); a piece that
    reshapes to a fixed size after the Conv runs at the declared size, the one it needs."""
    piece = conv_bn()
    piece.inputs[0].dims = (1, 64, 224, 224)
    (result,) = check(piece)
    assert result.passed and result.shapes["x"][2] <= 16, result.shapes
    fixed = conv_bn()
    fixed.inputs[0].dims = (1, 64, 6, 6)
    shape = np.array([1, 32 * 6 * 6], np.int64)
    for side, constants in ((fixed.before, fixed.constants_before), (fixed.after, fixed.constants_after)):
        side[-1].output[0] = "z"
        side.append(helper.make_node("Reshape", ["z", "shape"], ["y"]))
        constants["shape"] = shape
    fixed.channel_axes = {"y": None}
    (result,) = check(fixed)
    assert result.passed and result.method == "float64" and result.shapes["x"] == (1, 64, 6, 6), result.reason
