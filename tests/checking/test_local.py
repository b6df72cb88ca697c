"""The local check: hand-built pieces whose replacement is computed here with plain numpy, independently of
bnfold's fold rules, run through check_pieces (the float64 path, and with exact=False the ONNX Runtime path);
wrong folds must fail with the error they cause."""

import numpy as np
import onnx
import pytest
from onnx import helper

from bnfold.checking.local import LocalCheck, check_pieces
from bnfold.checking.metric import channel_errors, scale_floor, tolerance_for, worst_channel
from bnfold.graph.pieces import Piece, PieceInput

OPSET = [helper.make_opsetid("", 17)]
IR = 8
EPS = 1e-5


def bn_stats(channels, rng, spread=None, mean_offset=None):
    """(scale, bias, mean, var) of an eval-mode BN, in float64; var defaults to random in [0.5, 2]."""
    scale = rng.uniform(0.5, 2.0, channels)
    bias = rng.normal(0.0, 1.0, channels)
    var = rng.uniform(0.5, 2.0, channels) if spread is None else spread
    mean = rng.normal(0.0, 1.0, channels) if mean_offset is None else mean_offset
    return scale, bias, mean, var


def bn_node(source, output, prefix="bn"):
    return helper.make_node(
        "BatchNormalization",
        [source, f"{prefix}.scale", f"{prefix}.bias", f"{prefix}.mean", f"{prefix}.var"],
        [output],
        epsilon=EPS,
    )


def bn_constants(stats, dtype, prefix="bn"):
    return {f"{prefix}.{key}": value.astype(dtype) for key, value in zip(("scale", "bias", "mean", "var"), stats)}


def affine(stats):
    """Per-channel (multiplier, shift) of eval-mode BN: y = x * multiplier + shift."""
    scale, bias, mean, var = stats
    multiplier = scale / np.sqrt(var + EPS)
    return multiplier, bias - mean * multiplier


def conv_bn_piece(
    channels=16,
    in_channels=8,
    kernel=3,
    dtype=np.float32,
    seed=0,
    stats=None,
    conv_bias=None,
    mutate=None,
    spatial=None,
    **conv,
):
    """Conv -> BN and the single Conv that replaces it; `mutate(weight, bias, stats, ...)` may corrupt the fold."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 1.0, (channels, in_channels, kernel, kernel))
    conv_bias = rng.normal(0.0, 1.0, channels) if conv_bias is None else conv_bias
    stats = stats or bn_stats(channels, rng)
    multiplier, shift = affine(stats)
    new_weight = weight * multiplier[:, None, None, None]
    new_bias = conv_bias * multiplier + shift
    if mutate:
        new_weight, new_bias = mutate(new_weight, new_bias, stats, weight, conv_bias)
    return Piece(
        label="BatchNormalization bn into Conv conv",
        inputs=[PieceInput("x", np.dtype(dtype), (None, in_channels, spatial, spatial))],
        outputs=["y"],
        before=[helper.make_node("Conv", ["x", "w", "b"], ["c"], **conv), bn_node("c", "y")],
        after=[helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv)],
        constants_before={"w": weight.astype(dtype), "b": conv_bias.astype(dtype), **bn_constants(stats, dtype)},
        constants_after={"w": new_weight.astype(dtype), "b": new_bias.astype(dtype)},
        channel_axes={"y": 1},
    )


def gemm_bn_piece(features=32, out=24, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 1.0, (out, features))
    bias = rng.normal(0.0, 1.0, out)
    stats = bn_stats(out, rng)
    multiplier, shift = affine(stats)
    return Piece(
        label="BatchNormalization bn into Gemm gemm",
        inputs=[PieceInput("x", np.dtype(dtype), (None, features))],
        outputs=["y"],
        before=[helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), bn_node("g", "y")],
        after=[helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        constants_before={"w": weight.astype(dtype), "b": bias.astype(dtype), **bn_constants(stats, dtype)},
        constants_after={
            "w": (weight * multiplier[:, None]).astype(dtype),
            "b": (bias * multiplier + shift).astype(dtype),
        },
        channel_axes={"y": 1},
    )


def matmul_add_bn_piece(features=20, out=12, seed=2):
    """MatMul -> Add(bias) -> BN over [batch, out], folded into the MatMul's weight and the Add's bias."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 1.0, (features, out))
    bias = rng.normal(0.0, 1.0, out)
    stats = bn_stats(out, rng)
    multiplier, shift = affine(stats)
    return Piece(
        label="BatchNormalization bn into MatMul mm (+ Add add)",
        inputs=[PieceInput("x", np.dtype(np.float32), (None, features))],
        outputs=["y"],
        before=[
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["a"]),
            bn_node("a", "y"),
        ],
        after=[helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        constants_before={
            "w": weight.astype(np.float32),
            "b": bias.astype(np.float32),
            **bn_constants(stats, np.float32),
        },
        constants_after={
            "w": (weight * multiplier[None, :]).astype(np.float32),
            "b": (bias * multiplier + shift).astype(np.float32),
        },
        channel_axes={"y": 1},
    )


def grouped_conv_transpose_piece(in_channels=8, out_channels=12, group=4, seed=3, ignore_groups=False):
    """ConvTranspose (group 4) -> BN. Output channel g * (out/group) + j reads weight[group g's inputs, j]."""
    rng = np.random.default_rng(seed)
    per_group_out = out_channels // group
    weight = rng.normal(0.0, 1.0, (in_channels, per_group_out, 3, 3))
    bias = rng.normal(0.0, 1.0, out_channels)
    stats = bn_stats(out_channels, rng)
    multiplier, shift = affine(stats)
    in_group = np.arange(in_channels) // (in_channels // group)
    if ignore_groups:  # the classic bug: scale weight[:, j] by output channel j, as if group were 1
        columns = multiplier[:per_group_out][None, :].repeat(in_channels, axis=0)
    else:
        columns = multiplier[in_group[:, None] * per_group_out + np.arange(per_group_out)[None, :]]
    new_weight = weight * columns[:, :, None, None]
    return Piece(
        label="BatchNormalization bn into ConvTranspose up",
        inputs=[PieceInput("x", np.dtype(np.float32), (None, in_channels, None, None))],
        outputs=["y"],
        before=[
            helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], group=group, strides=[2, 2]),
            bn_node("t", "y"),
        ],
        after=[helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], group=group, strides=[2, 2])],
        constants_before={
            "w": weight.astype(np.float32),
            "b": bias.astype(np.float32),
            **bn_constants(stats, np.float32),
        },
        constants_after={"w": new_weight.astype(np.float32), "b": (bias * multiplier + shift).astype(np.float32)},
        channel_axes={"y": 1},
    )


def check(*pieces, opset_imports=OPSET, ir=IR, exact=True) -> list:
    return check_pieces(pieces, opset_imports=opset_imports, ir_version=ir, exact=exact)


# --- the metric, without onnxruntime ------------------------------------------------------------------------------


def test_channel_errors_judge_each_channel_by_its_own_magnitude():
    before = np.stack([np.full((2, 3), 1000.0), np.full((2, 3), 1.0)], axis=1)  # (2, 2, 3): channel 1 is 1000x smaller
    after = before.copy()
    after[:, 1] += 0.01  # 1% of the small channel, 1e-5 of the tensor's peak
    np.testing.assert_allclose(channel_errors(before, after, axis=1), [0.0, 0.01])
    assert worst_channel(before, after, axis=1) == pytest.approx((0.01, 1))
    # The same difference judged against the whole tensor's peak disappears: that is what per-channel prevents.
    assert worst_channel(before, after, axis=None) == pytest.approx((1e-5, None))


def test_channel_errors_floor_keeps_zero_channels_finite():
    before = np.zeros((1, 2, 4), np.float32)
    before[0, 0] = 8.0
    after = before.copy()
    np.testing.assert_array_equal(channel_errors(before, after, axis=1, floor=scale_floor(before)), [0.0, 0.0])
    after[0, 1] = 1e-6  # a stray value where the original is exactly zero: judged against one ulp of the peak
    errors = channel_errors(before, after, axis=1, floor=scale_floor(before))
    assert errors[1] == pytest.approx(1e-6 / (8.0 * np.finfo(np.float32).eps))
    assert np.isinf(channel_errors(before, after, axis=1)[1])  # without a floor a zero channel divides by zero


def test_channel_errors_negative_axis_and_shape_mismatch():
    before = np.arange(12.0).reshape(2, 3, 2) + 1
    after = before.copy()
    after[:, :, 1] *= 1.5
    errors = channel_errors(before, after, axis=-1)
    np.testing.assert_allclose(errors, [0.0, (0.5 * before[:, :, 1]).max() / before[:, :, 1].max()])
    with pytest.raises(ValueError, match="shapes differ"):
        channel_errors(before, after[:1], axis=0)


def test_tolerance_by_dtype():
    import ml_dtypes

    assert tolerance_for(np.float64) == 1e-9
    assert tolerance_for(np.float32) == 1e-4
    assert tolerance_for(np.float16) == 1e-2
    assert tolerance_for(ml_dtypes.bfloat16) == 5e-2
    assert tolerance_for(ml_dtypes.float8_e4m3fn) == 5e-2
    assert tolerance_for(np.int64) == 0.0
    assert tolerance_for(np.bool_) == 0.0


# --- correct folds pass -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "piece",
    [
        conv_bn_piece(pads=[1, 1, 1, 1]),
        gemm_bn_piece(dtype=np.float64),
        conv_bn_piece(dtype=np.float16),
        gemm_bn_piece(),
        matmul_add_bn_piece(),
        grouped_conv_transpose_piece(),
    ],
    ids=["conv", "gemm-float64", "conv-float16", "gemm", "matmul-add", "grouped-conv-transpose"],
)
@pytest.mark.parametrize("exact", [True, False], ids=["float64", "ort"])
def test_correct_folds_pass(piece, exact):
    if not exact and piece.constants_before["w"].dtype == np.float64 and piece.before[0].op_type == "Conv":
        pytest.skip("ONNX Runtime's CPU Conv has no float64 kernel")
    (result,) = check(piece, exact=exact)
    assert result.passed, result.reason
    assert not result.failed and result.skipped is None
    assert 0 <= result.max_error <= result.tolerance
    assert result.output == "y" and result.channel is not None
    assert result.method == ("float64" if exact else f"ORT {piece.constants_before['w'].dtype.name}")


def test_float64_correct_fold_is_near_exact():
    (result,) = check(gemm_bn_piece(dtype=np.float64))
    assert result.passed and result.method == "float64"
    assert result.max_error < 1e-12


# --- wrong folds fail, with the error they cause --------------------------------------------------------------------


def test_mean_not_subtracted_fails():
    channels = 16
    rng = np.random.default_rng(5)
    # Means 10x the conv outputs' spread (~sqrt(8 * 9) = 8.5): leaving them in shifts every channel by most of its peak.
    stats = bn_stats(channels, rng, mean_offset=np.full(channels, 85.0))

    def forget_mean(weight, bias, stats, _w, conv_bias):
        multiplier, _ = affine(stats)
        return weight, conv_bias * multiplier + stats[1]

    (result,) = check(conv_bn_piece(channels=channels, stats=stats, mutate=forget_mean, pads=[1, 1, 1, 1]))
    assert result.failed and not result.passed
    # |mean * m| over a channel whose values are (y - 85) * m + beta with |y| <~ 30: the error is 0.7x-1.6x its peak.
    assert 0.5 < result.max_error < 2.0
    assert "local check failed: max rel error" in result.reason


def test_two_channels_swapped_fails():
    def swap(weight, bias, *_):
        weight, bias = weight.copy(), bias.copy()
        weight[[3, 7]] = weight[[7, 3]]
        bias[[3, 7]] = bias[[7, 3]]
        return weight, bias

    (result,) = check(conv_bn_piece(mutate=swap, pads=[1, 1, 1, 1]))
    assert result.failed
    assert result.channel in (3, 7)
    assert result.max_error > 0.3  # two unrelated channels of similar scale differ by about their own magnitude


def test_shift_off_in_one_tiny_channel_of_64_fails():
    """Channel 41 is 1e3 times smaller than the other 63; its shift is off by 1% of its range. Relative to the
    tensor's peak that is ~1e-5 (below the float32 tolerance); relative to the channel, ~1e-2."""
    channels, in_channels, small = 64, 8, 41
    weight_spread = np.full(channels, 9.0 * in_channels)  # var of a 3x3 conv over unit-normal weights and inputs
    scale = np.ones(channels)
    scale[small] = 1e-3
    stats = (scale, np.zeros(channels), np.zeros(channels), weight_spread)  # mean 0, as the conv bias is 0 below

    def shift_small(weight, bias, stats, *_):
        bias = bias.copy()
        bias[small] += 0.01 * 4.0 * stats[0][small]  # range of a standardized channel: about 4 of its units
        return weight, bias

    piece = conv_bn_piece(
        channels=channels,
        in_channels=in_channels,
        stats=stats,
        conv_bias=np.zeros(channels),
        mutate=shift_small,
        seed=7,
    )
    (result,) = check(piece)
    assert result.failed
    assert result.channel == small
    # 4e-5 * scale over a channel whose peak is about 2-3.5 standard deviations: 1e-2 to 2e-2.
    assert 5e-3 < result.max_error < 3e-2


def test_grouped_conv_transpose_wrong_group_mapping_fails():
    (result,) = check(grouped_conv_transpose_piece(ignore_groups=True))
    assert result.failed and result.max_error > 0.05


# --- skips and run failures ---------------------------------------------------------------------------------------


def test_batch_norm_6_at_opset_6_is_skipped_with_a_reason():
    rng = np.random.default_rng(8)
    stats = bn_stats(4, rng)
    multiplier, shift = affine(stats)
    piece = Piece(
        label="BatchNormalization bn (opset 6)",
        inputs=[PieceInput("x", np.dtype(np.float32), (1, 4, 5, 5))],
        outputs=["y"],
        before=[bn_node("x", "y")],
        after=[helper.make_node("Mul", ["x", "m"], ["s"]), helper.make_node("Add", ["s", "a"], ["y"])],
        constants_before=bn_constants(stats, np.float32),
        constants_after={
            "m": multiplier.reshape(1, 4, 1, 1).astype(np.float32),
            "a": shift.reshape(1, 4, 1, 1).astype(np.float32),
        },
        channel_axes={"y": 1},
    )
    (result,) = check(piece, opset_imports=[helper.make_opsetid("", 6)], ir=3)
    assert result.skipped is not None and not result.passed and not result.failed
    assert "cannot run the original piece" in result.skipped and "BatchNormalization" in result.skipped
    assert result.reason.startswith("local check skipped:")


def test_after_side_that_does_not_run_is_a_failure_and_bad_pieces_only_judge_themselves():
    good = [conv_bn_piece(seed=seed, pads=[1, 1, 1, 1]) for seed in range(5)]
    broken_after = conv_bn_piece(seed=10)
    del broken_after.constants_after["b"]  # the replacement reads a constant it does not carry
    custom = conv_bn_piece(seed=11)
    custom.before[1] = helper.make_node("MyBatchNorm", list(custom.before[1].input), ["y"], domain="custom.ops")
    pieces = good[:2] + [broken_after] + good[2:4] + [custom] + good[4:]
    opsets = OPSET + [helper.make_opsetid("custom.ops", 1)]
    results = check_pieces(pieces, opset_imports=opsets, ir_version=IR)
    assert [r.passed for r in results] == [True, True, False, True, True, False, True]
    assert results[2].failed and "does not run where the original does" in results[2].error
    assert results[5].skipped is not None and "MyBatchNorm" in results[5].skipped


def test_pieces_that_do_not_run_print_nothing(capfd):
    """ORT's own error log is silenced: the skip is reported in the LocalCheck, not as stderr noise. (A declared
    5x5 input too small for the 7x7 kernel is no reason to skip: the piece is probed at sizes its kernel fits.)"""
    w = np.ones((4, 4, 7, 7), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["y"])]
    unrunnable = Piece(  # 4 channels of n x n values never split into 7 rows: ONNX Runtime fails at every size
        "unrunnable",
        [PieceInput("x", np.dtype(np.float32), (1, 4, 5, 5))],
        ["y"],
        before=nodes,
        after=nodes,
        constants_before={"w": w, "shape": np.array([7, -1], np.int64)},
        constants_after={"w": w, "shape": np.array([7, -1], np.int64)},
    )
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    small = Piece("too small", [PieceInput("x", np.dtype(np.float32), (1, 4, 5, 5))], ["y"], before=[conv],
                  after=[conv], constants_before={"w": w}, constants_after={"w": w})
    skipped, ran = check(unrunnable, small, exact=False)
    assert skipped.skipped is not None and "Reshape" in skipped.skipped, skipped.reason
    assert ran.passed and ran.shapes["x"][2] >= 7, ran.reason
    assert capfd.readouterr().err == ""


def test_nan_on_the_before_side_skips_the_output_and_after_only_nan_fails():
    x = PieceInput("x", np.dtype(np.float32), (2, 3))
    unlucky = Piece(
        "log", [x], ["y"], before=[helper.make_node("Log", ["x"], ["y"])], after=[helper.make_node("Log", ["x"], ["y"])]
    )
    broken = Piece(
        "sqrt",
        [x],
        ["y"],
        before=[helper.make_node("Abs", ["x"], ["y"])],
        after=[helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Mul", ["s", "s"], ["y"])],
    )
    skipped, failed = check(unlucky, broken)
    assert skipped.skipped is not None and "NaN/inf" in skipped.notes[0] and not skipped.failed
    assert failed.failed and failed.max_error == float("inf") and "NaN/inf in the replacement" in failed.error


def test_both_values_of_a_bool_input_are_tried():
    """An If whose else branch the fold got wrong: caught although one random bool scalar picks one branch."""

    def branch(name, value):
        constant = helper.make_tensor(f"{name}.k", onnx.TensorProto.FLOAT, [], [value])
        node = helper.make_node("Mul", ["x", f"{name}.k"], [f"{name}.out"])
        out = helper.make_tensor_value_info(f"{name}.out", onnx.TensorProto.FLOAT, None)
        return helper.make_graph([node], name, [], [out], initializer=[constant])

    def if_node(else_value):
        then_branch, else_branch = branch("then", 2.0), branch("else", else_value)
        return helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)

    piece = Piece(
        "if",
        [PieceInput("cond", np.dtype(np.bool_), ()), PieceInput("x", np.dtype(np.float32), (3,))],
        ["y"],
        before=[if_node(3.0)],
        after=[if_node(3.5)],
    )
    (result,) = check(piece)
    assert result.failed and result.max_error == pytest.approx(0.5 / 3.0, rel=1e-6)


# --- shapes ------------------------------------------------------------------------------------------------------


def test_unknown_spatial_dim_gets_a_size_valid_for_the_kernel():
    # A 5x5 kernel dilated by 3 spans 13 pixels, unpadded: the default size must fit it.
    (result,) = check(conv_bn_piece(kernel=5, dilations=[3, 3], strides=[2, 2]))
    assert result.passed, result.reason
    batch, channels, height, width = result.shapes["x"]
    assert (batch, channels) == (1, 8) and height == width >= 13


def test_chained_kernels_retry_a_larger_size():
    """Two unpadded 7x7 convs need 13 pixels; the first size (7 + 3) is too small, the retry (16) fits."""
    rng = np.random.default_rng(9)
    w1, w2 = rng.normal(size=(4, 4, 7, 7)).astype(np.float32), rng.normal(size=(4, 4, 7, 7)).astype(np.float32)
    piece = Piece(
        "chain",
        [PieceInput("x", np.dtype(np.float32), (None, 4, None, None))],
        ["y"],
        before=[helper.make_node("Conv", ["x", "w1"], ["h"]), helper.make_node("Conv", ["h", "w2"], ["y"])],
        after=[helper.make_node("Conv", ["x", "w1"], ["h"]), helper.make_node("Conv", ["h", "w2"], ["y"])],
        constants_before={"w1": w1, "w2": w2},
        constants_after={"w1": w1, "w2": w2},
        channel_axes={"y": 1},
    )
    (result,) = check(piece)
    assert result.passed, result.reason
    assert result.shapes["x"] == (1, 4, 16, 16)


# --- batching ---------------------------------------------------------------------------------------------------


@pytest.fixture
def count_sessions(monkeypatch):
    import onnxruntime

    created = []
    real = onnxruntime.InferenceSession

    class Counting(real):
        def __init__(self, *args, **kwargs):
            created.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Counting)
    return created


def test_200_pieces_run_in_one_session_per_side(count_sessions):
    pieces = [conv_bn_piece(channels=8, in_channels=4, seed=seed, pads=[1, 1, 1, 1]) for seed in range(200)]
    results = check(*pieces, exact=False)
    assert all(result.passed for result in results), [r.reason for r in results if not r.passed]
    assert len(count_sessions) == 2


def test_float64_path_needs_no_session(count_sessions):
    results = check(*[conv_bn_piece(channels=8, in_channels=4, seed=seed, pads=[1, 1, 1, 1]) for seed in range(5)])
    assert all(result.passed and result.method == "float64" for result in results)
    assert count_sessions == []


def test_chunks_bound_the_constants_per_session(monkeypatch, count_sessions):
    import bnfold.checking.ort_pieces as ort_pieces

    pieces = [conv_bn_piece(seed=seed, pads=[1, 1, 1, 1]) for seed in range(6)]
    per_piece = sum(array.nbytes for array in pieces[0].constants_before.values())
    monkeypatch.setattr(ort_pieces, "CHUNK_BYTES", 2 * per_piece)
    results = check(*pieces, exact=False)
    assert all(result.passed for result in results)
    assert len(count_sessions) == 6  # three chunks of two pieces, one session per side each


def test_single_sample_channels_are_judged_over_copies(count_sessions):
    """A Gemm at batch 1 has one value per channel: one value near zero by chance would make rounding look like a
    wrong fold. The piece runs again as copies on independent data, so each channel's scale is a max over 32."""
    fixed_batch = gemm_bn_piece(features=2048, out=1000, seed=4)
    fixed_batch.inputs[0].dims = (1, 2048)
    (result,) = check(fixed_batch, exact=False)
    assert result.passed, result.reason
    assert result.max_error < 1e-5  # float32 rounding over 2048 terms, judged against a steady channel scale
    assert result.shapes["x"] == (1, 2048)
    assert len(count_sessions) == 3  # before, before again with copies, after
    count_sessions.clear()
    (result,) = check(gemm_bn_piece(features=2048, out=1000, seed=4), exact=False)
    assert result.passed and result.shapes["x"] == (16, 2048)  # a free batch grows instead: one copy
    assert len(count_sessions) == 3


def test_single_sample_channels_get_a_larger_batch_in_float64():
    """The float64 path grows a free batch axis instead: one run, 16 values per channel."""
    (result,) = check(gemm_bn_piece(features=2048, out=1000, seed=4))
    assert result.passed and result.method == "float64", result.reason
    assert result.shapes["x"] == (16, 2048)


def test_colliding_names_across_pieces_stay_apart():
    """Every piece names its tensors x, w, b, c, y: prefixes keep a wrong piece from borrowing a right one's data."""
    right = conv_bn_piece(seed=20)
    wrong = conv_bn_piece(seed=21, mutate=lambda w, b, *_: (w, b + 1.0))
    results = check(right, wrong, right)
    assert [r.passed for r in results] == [True, False, True]
    assert isinstance(results[1], LocalCheck) and results[1].failed
