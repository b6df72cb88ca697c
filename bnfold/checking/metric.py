"""How far a fold's output may be from the original's: per-channel relative errors and their tolerances.

Each output is compared channel by channel against that channel's own magnitude, so one large channel cannot hide
a wrong small one. Pure numpy; the local check (ONNX Runtime float32 and float64 paths) judges with these.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from .tolerance import is_float, machine_epsilon

# Largest relative error per channel a correct fold may show, by output dtype. Measured with
# benchmarks/local_check.py: the 53 Conv+BN folds of a ResNet-50 (up to 2048 channels, 3x3 kernels over 512
# channels) in ONNX Runtime CPU, optimizations off. float32: correct folds reach 3.4e-6 (random BN statistics with
# scales 0.1-10, means up to 5x the activations' spread) and 2.2e-6 (trained-looking statistics); a Gemm over 2048
# features 1.6e-6; so 1e-4 leaves 30x, while the smallest wrong fold the tests plant (a shift off by 1% of one
# channel's range) shows as 1e-2. float16: 1.8e-3 (trained-looking) to 5.1e-3 (extreme statistics), mostly the
# folded weights' own rounding to float16; a Gemm 1.3e-3. float64: correct folds within 1e-14. bfloat16 keeps the
# end-to-end check's 5e-2 (eps 8e-3). Integer and bool outputs must match exactly.
TOLERANCES: Dict[str, float] = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
LOW_PRECISION_TOLERANCE = 5e-2  # other float types numpy lacks (float8, float4 from ml_dtypes)
EXACT = 0.0


def channel_errors(before: np.ndarray, after: np.ndarray, axis: Optional[int], floor: float = 0.0) -> np.ndarray:
    """Per channel on `axis` (None: the whole tensor is one channel): max |after - before| / max(max |before|,
    floor), in float64. `floor` keeps an all-zero channel from dividing by zero; a channel where both are zero
    scores 0. The arrays must be finite and of one shape."""
    b = np.asarray(before).astype(np.float64)
    a = np.asarray(after).astype(np.float64)
    if b.shape != a.shape:
        raise ValueError(f"shapes differ: {b.shape} vs {a.shape}")
    b, a = by_channel(b, axis), by_channel(a, axis)
    if b.shape[1] == 0:
        return np.zeros(b.shape[0])
    difference = np.abs(a - b).max(axis=1)
    scale = np.maximum(np.abs(b).max(axis=1), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = difference / scale
    return np.where(difference == 0, 0.0, errors)


def by_channel(array: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """`array` as (channels, values per channel); one row when there is no channel axis. Zero channels or zero
    values per channel (a 0-channel conv, an empty batch) give an empty array of the right shape."""
    array = np.asarray(array)
    if axis is None or array.ndim == 0:
        return array.reshape(1, array.size)
    moved = np.moveaxis(array, axis, 0)
    channels = moved.shape[0]
    return moved.reshape(channels, moved.size // channels if channels else 0)


def worst_channel(
    before: np.ndarray, after: np.ndarray, axis: Optional[int], floor: float = 0.0
) -> Tuple[float, Optional[int]]:
    """(largest channel error, its channel index or None without a channel axis) of `channel_errors`."""
    errors = channel_errors(before, after, axis, floor)
    if errors.size == 0:
        return 0.0, None
    index = int(np.argmax(errors))
    return float(errors[index]), (index if axis is not None and np.ndim(before) > 0 else None)


def tolerance_for(dtype: np.dtype) -> float:
    """The largest per-channel relative error a correct fold may show in an output of this dtype."""
    dtype = np.dtype(dtype)
    if dtype.name in TOLERANCES:
        return TOLERANCES[dtype.name]
    return LOW_PRECISION_TOLERANCE if is_float(dtype) else EXACT


def scale_floor(before: np.ndarray) -> float:
    """The smallest channel scale: one rounding unit of the output's peak, so a channel that is zero in the
    original is judged against what rounding elsewhere in the tensor could leave in it."""
    before = np.asarray(before)
    if before.size == 0:
        return np.finfo(np.float64).tiny
    eps = machine_epsilon(before.dtype) if is_float(before.dtype) else 1.0
    peak = float(np.abs(before.astype(np.float64)).max())
    return max(peak * eps, np.finfo(np.float64).tiny)


def unit_roundoff(dtype: np.dtype) -> float:
    """The largest relative error of rounding a real number to this float dtype (half its machine epsilon); 0 for
    integer and bool dtypes, which hold what they hold exactly."""
    dtype = np.dtype(dtype)
    return machine_epsilon(dtype) / 2 if is_float(dtype) else 0.0


