"""The tolerance rules of the end-to-end check (pure numpy): which atol and rtol a tensor is judged at.

An element passes when |candidate - reference| <= atol + rtol * |reference|. A default atol (none given) follows
the data: it is the dtype's base atol times max(1, peak |reference|) of the tensor, since the rounding of an exact
refactoring grows with the magnitude of the values it comes from. By default each channel (axis 1 of a tensor of
rank >= 2 with at least MIN_CHANNEL_ELEMENTS elements per channel) must also pass on its own: its mean
|candidate - reference| must stay within CHANNEL_MEAN_FRACTION of the base atol times max(1, the channel's peak,
the tensor's peak / CHANNEL_PEAK_FLOOR). A wrong fold moves a whole channel (a shift, a mean, a swapped pair),
while rounding moves single elements, so one large channel (box regressions ~1e3) cannot hide a wrong small one
(scores ~1). The floor keeps near-dead channels fed by large inputs (rounding of ~1e-3 of the tensor's peak) from
failing a correct fold. The dtype a default comes from is the least precise one computed on the way to the tensor
(`tolerance_dtype`; checking.noise finds it). An atol the caller gives is used as is, for every element, with no
channel check.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UsageError
from ..tolerances import DEFAULT_TOLERANCES

# (atol, rtol) by dtype: bnfold.tolerances (a module of its own, so `bnfold verify --help` needs no numpy).
# Float dtypes numpy does not class as np.floating (from ml_dtypes) share the bfloat16 row.
_LOW_PRECISION_FLOATS = ("bfloat16", "float8", "float4")
Tolerance = Union[None, float, Mapping[Optional[str], float]]

# A channel's mean error is compared when it has at least this many elements (at batch 1, a [1, C] tensor has one
# per channel: its mean would be a single element's error, which the element rule already covers).
MIN_CHANNEL_ELEMENTS = 8
# A channel's scale is at least the tensor's peak over this. A float32 ResNet-50 (random weights, peak ~1e4) has
# channels whose mean rounding error is 5e-5 of their own peak of ~1: scaling by their peak alone fails a correct
# fold; at 1/100 of the tensor's peak the margin is > 100x, and a mean not subtracted on the score channels of a
# head whose boxes reach 1e5 (1e-4 * 1e3 = 0.1 against errors ~1) is still caught.
CHANNEL_PEAK_FLOOR = 100.0
# Rounding averages out over a channel; a wrong fold's error does not. The worst channel mean error of correct
# float32 folds, over that scale: 2.9e-6 on a random-weight ResNet-50 (activations ~1e4), <= 5e-7 on the repository's
# models and a 12-layer chain growing to ~1e6; the mean not subtracted in layer 10 of that chain is 4e-5.
CHANNEL_MEAN_FRACTION = 0.2


def is_float(dtype: np.dtype) -> bool:
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.inexact) or dtype.name.startswith(_LOW_PRECISION_FLOATS)


def machine_epsilon(dtype: np.dtype) -> float:
    """The machine epsilon of a float dtype (larger: less precise)."""
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype).eps)


def tolerance_dtype(dtype: np.dtype, flowing) -> np.dtype:
    """The dtype whose tolerance a tensor of `dtype` is judged at: `flowing` (the least precise float computed on
    the way to it, see checking.noise) when it is less precise."""
    if flowing is None or not is_float(dtype) or np.issubdtype(dtype, np.complexfloating):
        return dtype
    return flowing if machine_epsilon(flowing) > machine_epsilon(dtype) else dtype


def default_tolerance(dtype: np.dtype) -> Tuple[float, float]:
    """(atol, rtol) for a value of this dtype when the user gave none (before scaling by the data)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        dtype = np.dtype(f"float{dtype.itemsize * 4}")
    if dtype.name in DEFAULT_TOLERANCES:
        return DEFAULT_TOLERANCES[dtype.name]
    if is_float(dtype):
        return DEFAULT_TOLERANCES["bfloat16"]
    return DEFAULT_TOLERANCES["exact"]


def output_peak(array: np.ndarray) -> float:
    """max(1, largest finite |value|)."""
    array = np.asarray(array)
    if array.size == 0 or not is_float(array.dtype):
        return 1.0
    finite = np.abs(array[np.isfinite(array)].astype(np.float64))
    return max(1.0, float(finite.max())) if finite.size else 1.0


def channel_tolerance(reference: np.ndarray, base_atol: float) -> Optional[np.ndarray]:
    """Per-channel tolerance of the mean error (see the module docstring), shaped [C]; None when the tensor has no
    channel axis with enough elements per channel."""
    reference = np.asarray(reference)
    if reference.ndim < 2 or reference.size == 0 or not is_float(reference.dtype) \
            or reference.size // reference.shape[1] < MIN_CHANNEL_ELEMENTS:
        return None
    axes = tuple(axis for axis in range(reference.ndim) if axis != 1)
    peaks = np.abs(reference).max(axis=axes).astype(np.float64)
    if not np.isfinite(peaks).all():
        magnitude = np.abs(as_comparable(reference))
        peaks = np.where(np.isfinite(magnitude), magnitude, 0.0).max(axis=axes)
    return CHANNEL_MEAN_FRACTION * base_atol * np.maximum(np.maximum(1.0, peaks), peaks.max() / CHANNEL_PEAK_FLOOR)


def resolve_tolerance(value: Tolerance, name: str, dtype: np.dtype, which: int) -> float:
    """The tolerance for one value: its own override, else the global value, else the dtype default (unscaled)."""
    if isinstance(value, Mapping):
        if name in value:
            return float(value[name])
        value = value.get(None)
    if value is None:
        return default_tolerance(dtype)[which]
    return float(value)


def is_default(value: Tolerance, name: str) -> bool:
    if isinstance(value, Mapping):
        return name not in value and value.get(None) is None
    return value is None


def check_tolerance(value: Tolerance, option: str, names: Sequence[str]) -> None:
    """A per-name override must name an output; every value must be a non-negative number."""
    if value is not None and not isinstance(value, (Mapping, int, float)):
        raise UsageError(f"{option} must be a number or {{output name: number}}, got {type(value).__name__}")
    overrides = value if isinstance(value, Mapping) else {None: value}
    unknown = sorted(name for name in overrides if name is not None and name not in names)
    if unknown:
        raise UsageError(f"{option} names unknown output(s) {unknown}; the outputs are: {', '.join(names)}")
    for name, number in overrides.items():
        label = f" for {name!r}" if name is not None else ""
        try:
            valid = number is None or float(number) >= 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise UsageError(f"{option}{label} must be a non-negative number, got {number!r}")


def as_comparable(array: np.ndarray) -> np.ndarray:
    """float64 (complex128 for complex) so integer differences cannot overflow and low-precision floats widen."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.complexfloating):
        return array.astype(np.complex128)
    return array.astype(np.float64)
