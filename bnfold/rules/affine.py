"""Fold arithmetic: plain numpy in float64, no graph and no onnx import.

An eval-mode BatchNormalization is the per-channel affine map y = x * scale + shift with
scale = gamma / sqrt(var + eps) and shift = beta - mean * scale. Folding it forward into a linear producer
multiplies the producer's weights along its output-channel axis by `scale` and maps its bias b to b * scale + shift.
Folding it backward (the map comes *before* a linear op) scales the op's input-channel axis, and its shift, pushed
through the weights, becomes a bias. Chains of Mul/Add/Sub/Div by constants compose into one (scale, shift).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


class FoldMathError(ValueError):
    """The BN parameters cannot be folded exactly (non-finite values, var + eps <= 0, mismatched lengths)."""


def bn_affine(gamma, beta, mean, var, eps: float) -> Tuple[np.ndarray, np.ndarray]:
    """(scale, shift) in float64 of an eval-mode BN; raises FoldMathError when the BN is not a finite affine map."""
    params = [np.asarray(p, dtype=np.float64).reshape(-1) for p in (gamma, beta, mean, var)]
    gamma, beta, mean, var = params
    lengths = {p.size for p in params}
    if len(lengths) != 1:
        raise FoldMathError(f"BN parameters have different lengths (scale, bias, mean, var: {[p.size for p in params]})")
    for label, values in zip(("scale", "bias", "mean", "var"), params):
        if not np.all(np.isfinite(values)):
            raise FoldMathError(f"BN {label} contains NaN or inf")
    if not np.isfinite(eps):
        raise FoldMathError("BN epsilon is NaN or inf")
    denominator = var + np.float64(eps)
    if np.any(denominator <= 0):
        channel = int(np.argmin(denominator))
        raise FoldMathError(f"var + epsilon <= 0 at channel {channel} ({denominator[channel]:g})")
    scale = gamma / np.sqrt(denominator)
    shift = beta - mean * scale
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise FoldMathError("BN scale or shift overflows")
    return scale, shift


def scale_axis(weight: np.ndarray, scale: np.ndarray, axis: int, dtype=np.float64) -> np.ndarray:
    """weight * scale broadcast along `axis`, each product computed in float64 and rounded once to `dtype`: with a
    float32 dtype the same values as a float64 result cast afterwards, without a float64 copy of the weight."""
    weight = np.asarray(weight)
    shape = [1] * weight.ndim
    shape[axis] = -1
    out = np.empty(weight.shape, dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf is refused by cast_exact
        np.multiply(weight, np.asarray(scale, dtype=np.float64).reshape(shape), out=out, dtype=np.float64,
                    casting="unsafe")
    return out


def scale_conv_transpose_weight(weight: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    """Scale a ConvTranspose weight [C_in, C_out/group, k...] by a per-output-channel factor.

    Output channel g * (C_out/group) + j is computed from the C_in/group weight rows of group g, column j,
    so the factor is laid out as [group, 1, C_out/group] over the row-grouped weight.
    """
    weight = np.asarray(weight, dtype=np.float64)
    c_in, c_out_per_group = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    grouped = weight.reshape((group, c_in // group, c_out_per_group) + kernel)
    factors = np.asarray(scale, dtype=np.float64).reshape((group, 1, c_out_per_group) + (1,) * len(kernel))
    return (grouped * factors).reshape(weight.shape)


def fold_bias(bias: Optional[np.ndarray], scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """New bias b * scale + shift (b = 0 when the producer had none), float64."""
    if bias is None:
        return np.array(shift, dtype=np.float64)
    return np.asarray(bias, dtype=np.float64).reshape(-1) * scale + shift


def cast_exact(values: np.ndarray, dtype) -> np.ndarray:
    """Cast float64 results back to the tensor's dtype; raise FoldMathError if that overflows to inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        cast = np.asarray(values).astype(dtype, copy=False)
    if not np.isfinite(cast).all():  # in the target dtype: no float64 copy of the weight
        raise FoldMathError(f"folded values overflow {np.dtype(dtype).name}")
    return cast


def max_rounding_error(exact: np.ndarray, cast: np.ndarray) -> float:
    """Largest absolute difference the cast to a low-precision dtype (float16, bfloat16) introduced.

    float32 and float64 report 0.0: their rounding is far below any tolerance, and measuring it on every weight
    would cost as much as the fold itself.
    """
    if exact.size == 0 or cast.dtype.itemsize >= 4:
        return 0.0
    return float(np.max(np.abs(np.asarray(exact, np.float64) - cast.astype(np.float64))))

def _per_weight_row(values: np.ndarray, c_out: int, group: int) -> np.ndarray:
    """[C_out, C_in/group]: entry (o, i) is the value of the input channel that output o reads at position i
    (channel (o // (C_out/group)) * (C_in/group) + i)."""
    grouped = np.asarray(values, dtype=np.float64).reshape(group, -1)
    return np.repeat(grouped, c_out // group, axis=0)


def conv_input_affine(weight: np.ndarray, bias: Optional[np.ndarray], scale: np.ndarray, shift: np.ndarray,
                      group: int) -> Tuple[np.ndarray, np.ndarray]:
    """Weight and bias of a Conv that computes Conv(x * scale + shift) from x, valid when the Conv pads nothing.

    weight is [C_out, C_in/group, k...]. Every output sums whole windows of the shifted input, so the shift adds
    sum(W[o] * shift) to output channel o.
    """
    weight = np.asarray(weight, dtype=np.float64)
    c_out = weight.shape[0]
    window = (slice(None), slice(None)) + (None,) * (weight.ndim - 2)
    new_weight = weight * _per_weight_row(scale, c_out, group)[window]
    added = np.sum(weight * _per_weight_row(shift, c_out, group)[window], axis=tuple(range(1, weight.ndim)))
    old_bias = np.zeros(c_out) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    return new_weight, old_bias + added


def rows_affine(weight: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For (x * scale + shift) @ W with W [K, N]: the row-scaled W and the bias shift @ W ([N]) it leaves."""
    weight = np.asarray(weight, dtype=np.float64)
    return weight * np.asarray(scale, dtype=np.float64)[:, None], np.asarray(shift, dtype=np.float64) @ weight


def compose_affine(scale: np.ndarray, shift: np.ndarray, op_type: str, constant: np.ndarray,
                   data_first: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of `op(x * scale + shift, constant)` as a map of x; data_first says which operand x is.

    Mul, Add and Sub are affine either way round; Div only with the data first (constant / x is not).
    """
    constant = np.asarray(constant, dtype=np.float64)
    if op_type == "Mul":
        return scale * constant, shift * constant
    if op_type == "Add":
        return scale, shift + constant
    if op_type == "Sub":
        return (scale, shift - constant) if data_first else (-scale, constant - shift)
    if op_type == "Div" and data_first:
        return scale / constant, shift / constant
    raise ValueError(f"{op_type} with the constant {'second' if data_first else 'first'} is not affine in x")
