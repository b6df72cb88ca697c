"""Arithmetic for per-channel affine maps x * scale + shift that are not a BN right after its producer.

Backward folds: the map comes *before* a linear op, so it scales the op's input-channel axis and its shift,
pushed through the weights, becomes a bias. Decomposed BNs: chains of Mul/Add/Sub/Div by constants compose into
one (scale, shift). Plain float64 numpy, no graph code.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


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
