"""Re-parameterization arithmetic: parallel convolutions of one input, summed, as one convolution (RepVGG,
MobileOne). Plain numpy in float64, no graph and no onnx import.

A branch is a convolution y = W * x + b with its geometry. Output position o of a branch samples input positions
o * stride - pad_begin + dilation * j, j = 0 .. k-1, along each spatial axis. Branches merge exactly when every
branch has the same stride, produces the same number of outputs for every input size (same
pad_begin + pad_end - dilation * (k - 1)), and samples a window that lies inside the largest branch's window at a
whole number of taps: its kernel is then zero-padded to that window, its groups expanded to the smallest group
count in block-diagonal form, and kernels and biases summed. An identity branch, or a per-channel affine of the
input x * scale + shift, is the depthwise 1x1 convolution with weight `scale` and bias `shift`; a per-channel
affine map after a branch scales its kernels and maps its bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np


class MergeError(ValueError):
    """The branches cannot be summed into one convolution exactly; str() says why."""


@dataclass
class ConvBranch:
    """A convolution in float64: weight [C_out, C_in/group, k...], bias [C_out], and its geometry per spatial axis
    (pads in ONNX order: every axis's begin, then every axis's end)."""

    weight: np.ndarray
    bias: np.ndarray
    group: int
    strides: Tuple[int, ...]
    dilations: Tuple[int, ...]
    pads: Tuple[int, ...]

    @property
    def kernel(self) -> Tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.group


def identity_branch(scale: np.ndarray, shift: np.ndarray, spatial_rank: int) -> ConvBranch:
    """x * scale + shift per channel, as a depthwise 1x1 convolution with no padding and stride 1."""
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    shift = np.broadcast_to(np.asarray(shift, dtype=np.float64).reshape(-1), scale.shape).copy()
    channels = scale.size
    return ConvBranch(scale.reshape((channels, 1) + (1,) * spatial_rank), shift, channels,
                      (1,) * spatial_rank, (1,) * spatial_rank, (0,) * (2 * spatial_rank))


def affine_after(branch: ConvBranch, scale: np.ndarray, shift: np.ndarray) -> ConvBranch:
    """The branch followed by y * scale + shift per output channel: its kernels scaled, its bias mapped."""
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    weight = branch.weight * scale.reshape((-1,) + (1,) * (branch.weight.ndim - 1))
    bias = np.asarray(branch.bias, dtype=np.float64).reshape(-1) * scale + np.asarray(shift, dtype=np.float64)
    return ConvBranch(weight, bias, branch.group, branch.strides, branch.dilations, branch.pads)


def embed_kernel(weight: np.ndarray, kernel: Sequence[int], offsets: Sequence[int]) -> np.ndarray:
    """The weight zero-padded to `kernel`, its taps starting at `offsets` along each spatial axis."""
    weight = np.asarray(weight, dtype=np.float64)
    padded = np.zeros(weight.shape[:2] + tuple(kernel))
    where = (slice(None), slice(None)) + tuple(slice(o, o + k) for o, k in zip(offsets, weight.shape[2:]))
    padded[where] = weight
    return padded


def regroup(weight: np.ndarray, group: int, new_group: int) -> np.ndarray:
    """A grouped weight [C_out, C_in/group, k...] as the block-diagonal weight [C_out, C_in/new_group, k...] of the
    same convolution with `new_group` groups (`new_group` divides `group`)."""
    weight = np.asarray(weight, dtype=np.float64)
    if group == new_group:
        return weight
    c_out, per_group = weight.shape[:2]
    c_in = per_group * group
    out_per_group, out_per_new = c_out // group, c_out // new_group
    wide = np.zeros((c_out, c_in // new_group) + weight.shape[2:])
    for o in range(c_out):
        first_input = (o // out_per_group) * per_group  # the input channel that tap 0 of output o reads
        start = first_input - (o // out_per_new) * (c_in // new_group)
        wide[o, start:start + per_group] = weight[o]
    return wide


def _axis_window(branches: List[ConvBranch], axis: int, spatial_rank: int) -> Tuple[int, int, int, int, List[int]]:
    """(kernel, dilation, pad_begin, pad_end, each branch's tap offset) of the merged window along one axis."""
    sizes = [b.kernel[axis] for b in branches]
    dilations = {b.dilations[axis] for b, k in zip(branches, sizes) if k > 1}  # a 1-tap kernel has no dilation
    if len(dilations) > 1:
        raise MergeError(f"branches have dilations {sorted(dilations)} on spatial axis {axis}")
    dilation = dilations.pop() if dilations else 1
    begins = [b.pads[axis] for b in branches]
    ends = [b.pads[axis + spatial_rank] for b in branches]
    extents = {p + q - dilation * (k - 1) for p, q, k in zip(begins, ends, sizes)}
    if len(extents) > 1:
        raise MergeError(f"branches give different output sizes on spatial axis {axis} (kernels {sizes}, pads "
                         f"{[[p, q] for p, q in zip(begins, ends)]})")
    first = min(-p for p in begins)  # the first input position the merged window samples, relative to o * stride
    last = max(-p + dilation * (k - 1) for p, k in zip(begins, sizes))
    if any((-p - first) % dilation for p in begins) or (last - first) // dilation + 1 != max(sizes):
        raise MergeError(f"branch windows do not line up on spatial axis {axis}: kernels {sizes} with pads "
                         f"{[[p, q] for p, q in zip(begins, ends)]} do not sample inside the largest kernel's "
                         "window")
    offsets = [(-p - first) // dilation for p in begins]
    return max(sizes), dilation, -first, extents.pop() + last, offsets


def merge(branches: List[ConvBranch]) -> ConvBranch:
    """One convolution computing the sum of the branches exactly; MergeError with the reason when none does."""
    ranks = {b.weight.ndim for b in branches}
    if len(ranks) > 1:
        raise MergeError(f"branch weights have ranks {sorted(ranks)}")
    spatial_rank = ranks.pop() - 2
    outs, ins = {b.out_channels for b in branches}, {b.in_channels for b in branches}
    if len(outs) > 1 or len(ins) > 1:
        raise MergeError(f"branches map {sorted(ins)} input to {sorted(outs)} output channels")
    strides = {tuple(b.strides) for b in branches}
    if len(strides) > 1:
        raise MergeError(f"branches have strides {sorted(list(s) for s in strides)}")
    group = min(b.group for b in branches)
    if any(b.group % group for b in branches) or next(iter(outs)) % group:
        raise MergeError(f"branch groups {sorted({b.group for b in branches})} are not multiples of the smallest")
    windows = [_axis_window(branches, axis, spatial_rank) for axis in range(spatial_rank)]
    kernel = tuple(w[0] for w in windows)
    weight = np.zeros((next(iter(outs)), next(iter(ins)) // group) + kernel)
    bias = np.zeros(next(iter(outs)))
    for number, branch in enumerate(branches):
        offsets = [w[4][number] for w in windows]
        weight += regroup(embed_kernel(branch.weight, kernel, offsets), branch.group, group)
        bias += np.asarray(branch.bias, dtype=np.float64).reshape(-1)
    return ConvBranch(weight, bias, group, strides.pop(), tuple(w[1] for w in windows),
                      tuple(w[2] for w in windows) + tuple(w[3] for w in windows))
