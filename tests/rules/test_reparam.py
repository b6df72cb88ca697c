"""The merge arithmetic against a direct convolution written out here (numpy, float64, loops over taps)."""

import numpy as np
import pytest

from bnfold.rules.reparam import ConvBranch, MergeError, affine_after, identity_branch, merge, regroup


def convolve(x, branch: ConvBranch) -> np.ndarray:
    """2-D convolution of x [N, C, H, W] by the branch, straight from the definition."""
    weight, group = branch.weight, branch.group
    (sh, sw), (dh, dw) = branch.strides, branch.dilations
    top, left, bottom, right = branch.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    c_out, per_group, kh, kw = weight.shape
    out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((x.shape[0], c_out, out_h, out_w))
    for o in range(c_out):
        first = (o // (c_out // group)) * per_group
        for i in range(kh):
            for j in range(kw):
                window = padded[:, first:first + per_group, i * dh:i * dh + sh * (out_h - 1) + 1:sh,
                                j * dw:j * dw + sw * (out_w - 1) + 1:sw]
                y[:, o] += np.einsum("nchw,c->nhw", window, weight[o, :, i, j])
        y[:, o] += branch.bias[o]
    return y


def branch(rng, c_in, c_out, kernel, *, group=1, stride=1, dilation=1, pads=None):
    pads = pads if pads is not None else [dilation * (kernel // 2)] * 4
    return ConvBranch(rng.normal(size=(c_out, c_in // group, kernel, kernel)), rng.normal(size=c_out), group,
                      (stride, stride), (dilation, dilation), tuple(pads))


def assert_merge_is_the_sum(branches, size=7):
    x = np.random.default_rng(1).normal(size=(2, branches[0].in_channels, size, size))
    merged = merge(branches)
    np.testing.assert_allclose(convolve(x, merged), sum(convolve(x, b) for b in branches), rtol=1e-12, atol=1e-12)
    return merged


def test_repvgg_branches_merge_into_one_3x3():
    rng = np.random.default_rng(0)
    merged = assert_merge_is_the_sum([branch(rng, 4, 4, 3), branch(rng, 4, 4, 1),
                                      identity_branch(rng.normal(size=4), rng.normal(size=4), 2)])
    assert merged.kernel == (3, 3) and merged.pads == (1, 1, 1, 1) and merged.group == 1


def test_depthwise_branches_and_identity_stay_depthwise():
    rng = np.random.default_rng(0)
    merged = assert_merge_is_the_sum([branch(rng, 6, 6, 3, group=6), branch(rng, 6, 6, 3, group=6),
                                      branch(rng, 6, 6, 1, group=6), identity_branch(np.ones(6), np.zeros(6), 2)])
    assert merged.group == 6


def test_groups_that_divide_each_other_expand_block_diagonally():
    rng = np.random.default_rng(0)
    merged = assert_merge_is_the_sum([branch(rng, 8, 8, 3, group=2), branch(rng, 8, 8, 1, group=4),
                                      branch(rng, 8, 8, 1, group=8)])
    assert merged.group == 2 and merged.weight.shape == (8, 4, 3, 3)


def test_regroup_keeps_a_dense_weight():
    weight = np.arange(24.0).reshape(4, 2, 3, 1)
    np.testing.assert_array_equal(regroup(weight, 1, 1), weight)


def test_strided_dilated_and_uncentred_windows_that_nest_merge():
    rng = np.random.default_rng(0)
    assert_merge_is_the_sum([branch(rng, 4, 6, 3, stride=2), branch(rng, 4, 6, 1, stride=2)], size=9)
    assert_merge_is_the_sum([branch(rng, 4, 4, 3, dilation=2), branch(rng, 4, 4, 1),
                             identity_branch(np.ones(4), np.zeros(4), 2)])
    # A 2x2 kernel in the top-left of a 3x3 window (pads 1 before, 0 after: same output size).
    merged = assert_merge_is_the_sum([branch(rng, 4, 4, 3), branch(rng, 4, 4, 2, pads=[1, 1, 0, 0])])
    assert merged.kernel == (3, 3)


def test_an_affine_map_after_a_branch_scales_its_kernels_and_maps_its_bias():
    rng = np.random.default_rng(0)
    conv = branch(rng, 3, 3, 3)
    scale, shift = rng.normal(size=3), rng.normal(size=3)
    x = rng.normal(size=(1, 3, 5, 5))
    expected = convolve(x, conv) * scale[:, None, None] + shift[:, None, None]
    np.testing.assert_allclose(convolve(x, affine_after(conv, scale, shift)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("second, message", [
    (dict(kernel=1, stride=2, pads=[0] * 4), "strides"),
    (dict(kernel=3, pads=[2, 2, 0, 0]), "do not line up"),
    (dict(kernel=1, pads=[1] * 4), "different output sizes"),
    (dict(kernel=3, dilation=2), "dilations"),
    (dict(kernel=1, group=3), "not multiples"),
])
def test_branches_that_no_one_conv_computes_are_refused(second, message):
    rng = np.random.default_rng(0)
    kernel = second.pop("kernel")
    with pytest.raises(MergeError, match=message):
        merge([branch(rng, 6, 6, 3, group=2), branch(rng, 6, 6, kernel, **second)])


def test_an_identity_needs_the_same_output_size_and_stride_1():
    rng = np.random.default_rng(0)
    with pytest.raises(MergeError, match="strides"):
        merge([branch(rng, 4, 4, 3, stride=2), identity_branch(np.ones(4), np.zeros(4), 2)])
    with pytest.raises(MergeError, match="different output sizes"):
        merge([branch(rng, 4, 4, 3, pads=[0] * 4), identity_branch(np.ones(4), np.zeros(4), 2)])
