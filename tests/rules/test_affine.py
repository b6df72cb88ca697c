import numpy as np
import pytest

from bnfold.rules.affine import (FoldMathError, bn_affine, cast_exact, fold_bias, max_rounding_error,
                         scale_axis, scale_conv_transpose_weight)


def test_bn_affine_matches_the_formula():
    gamma, beta = np.array([1.5, -2.0]), np.array([0.1, 0.2])
    mean, var, eps = np.array([0.5, -1.0]), np.array([4.0, 0.25]), 1e-5
    scale, shift = bn_affine(gamma, beta, mean, var, eps)
    expected_scale = gamma / np.sqrt(var + eps)
    np.testing.assert_allclose(scale, expected_scale, rtol=1e-15)
    np.testing.assert_allclose(shift, beta - mean * expected_scale, rtol=1e-15)
    x = np.array([3.0, 7.0])
    np.testing.assert_allclose(x * scale + shift, gamma * (x - mean) / np.sqrt(var + eps) + beta, rtol=1e-14)


def test_bn_affine_computes_in_float64_from_float16_parameters():
    params = [np.array([1.0, 2.0], np.float16) for _ in range(4)]
    scale, shift = bn_affine(*params, 1e-3)
    assert scale.dtype == np.float64 and shift.dtype == np.float64


@pytest.mark.parametrize("var, message", [
    (np.array([1.0, -1.0]), "var \\+ epsilon <= 0 at channel 1"),
    (np.array([1.0, np.nan]), "var contains NaN"),
    (np.array([1.0, np.inf]), "var contains NaN or inf"),
])
def test_bn_affine_refuses_unfoldable_statistics(var, message):
    with pytest.raises(FoldMathError, match=message):
        bn_affine(np.ones(2), np.zeros(2), np.zeros(2), var, 0.0)


def test_bn_affine_refuses_mismatched_lengths():
    with pytest.raises(FoldMathError, match="different lengths"):
        bn_affine(np.ones(2), np.zeros(3), np.zeros(2), np.ones(2), 1e-5)


def test_scale_axis_scales_one_axis():
    weight = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(scale_axis(weight, np.array([2.0, 3.0, 4.0]), 1), weight * [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(scale_axis(weight, np.array([2.0, 3.0]), 0), weight * [[2.0], [3.0]])


@pytest.mark.parametrize("group, c_in, c_out", [(1, 4, 6), (2, 4, 6), (4, 4, 4), (3, 6, 9)])
def test_conv_transpose_scale_follows_output_channel_layout(group, c_in, c_out):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(c_in, c_out // group, 2, 2))
    scale = rng.normal(size=c_out)
    expected = weight.copy()
    per_group_in, per_group_out = c_in // group, c_out // group
    for row in range(c_in):
        g = row // per_group_in
        for column in range(per_group_out):
            expected[row, column] *= scale[g * per_group_out + column]
    np.testing.assert_allclose(scale_conv_transpose_weight(weight, scale, group), expected, rtol=1e-15)


def test_fold_bias_creates_a_bias_when_missing():
    scale, shift = np.array([2.0, 3.0]), np.array([1.0, -1.0])
    np.testing.assert_array_equal(fold_bias(None, scale, shift), shift)
    np.testing.assert_array_equal(fold_bias(np.array([1.0, 1.0]), scale, shift), [3.0, 2.0])


def test_cast_exact_refuses_overflow_and_reports_rounding():
    with pytest.raises(FoldMathError, match="overflow float16"):
        cast_exact(np.array([1e6]), np.float16)
    exact = np.array([1.0001])
    cast = cast_exact(exact, np.float16)
    assert 0 < max_rounding_error(exact, cast) < 1e-3
