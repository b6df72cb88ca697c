"""Numerical comparison of two models' values (pure numpy): the metrics of each tensor. No onnxruntime import.

The tolerance a tensor is judged at comes from checking.tolerance; here every element, every channel (its mean
error) and every structure (sequences, maps) is measured against it. NaN in the same place on both sides, and the
same infinity on both sides, count as equal; a NaN or infinity on one side only fails. A tensor with elements but
nothing finite on both sides to compare fails: a check that compared nothing proves nothing. Sequences and maps
(ZipMap's list of {label: probability}) must have the same structure and keys; the numbers inside are compared
with the float tolerance.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..tolerances import NOISE_MULTIPLE
from .result import OutputComparison, VerifyResult, shape_text
from .tolerance import (MIN_CHANNEL_ELEMENTS, Tolerance, as_comparable, channel_tolerance, check_tolerance,
                        default_tolerance, is_default, is_float, output_peak, resolve_tolerance, tolerance_dtype)

# Python floats inside sequences and maps (ZipMap) come from float32 tensors.
_PYTHON_FLOAT_DTYPE = np.dtype(np.float32)


def compare_array(name: str, reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float,
                  channel_atol: Optional[np.ndarray] = None, noise: Optional[np.ndarray] = None) -> OutputComparison:
    """Compare one tensor: structural checks first, then the element-wise metrics (see OutputComparison), and with
    channel_atol ([C]) each channel's mean error along axis 1. `noise` (broadcast to the tensor's shape) is allowed
    on top of atol, element by element; the reported atol includes its largest value."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    comparison = OutputComparison(name, tuple(reference.shape), reference.dtype.name,
                                  float(atol) + (float(np.max(noise)) if noise is not None and np.size(noise) else 0.0),
                                  rtol, per_channel=channel_atol is not None)
    if reference.shape != candidate.shape:
        comparison.problem = (
            f"shape differs: reference {shape_text(reference.shape)}, candidate {shape_text(candidate.shape)}"
        )
        return comparison
    if reference.dtype != candidate.dtype:
        comparison.problem = f"dtype differs: reference {reference.dtype.name}, candidate {candidate.dtype.name}"
        return comparison
    comparison.elements = reference.size
    if not (np.issubdtype(reference.dtype, np.number) or reference.dtype == np.bool_ or is_float(reference.dtype)):
        # Strings and other non-numeric outputs (labels of classic-ML models) must match exactly.
        comparison.mismatched = int((reference != candidate).sum())
        return comparison
    ref, cand = as_comparable(reference).ravel(), as_comparable(candidate).ravel()

    ref_nan, cand_nan = np.isnan(ref), np.isnan(cand)
    ref_inf, cand_inf = np.isinf(ref), np.isinf(cand)
    comparison.reference_nan, comparison.candidate_nan = int(ref_nan.sum()), int(cand_nan.sum())
    comparison.reference_inf, comparison.candidate_inf = int(ref_inf.sum()), int(cand_inf.sum())
    finite = np.isfinite(ref) & np.isfinite(cand)
    nonfinite_equal = (ref_nan & cand_nan) | (ref_inf & cand_inf & (ref == cand))
    nonfinite_mismatched = int((~finite & ~nonfinite_equal).sum())
    comparison.nonfinite_mismatched = nonfinite_mismatched

    if channel_atol is not None:
        channel_error = _channel_mean_error(reference.shape, ref, cand, finite)
        comparison.channels_outside = int((channel_error > channel_atol).sum())
        comparison.channel_error_ratio = _error_ratio(channel_error, channel_atol)
    ref, cand = ref[finite], cand[finite]
    comparison.compared_elements = ref.size
    error = np.abs(cand - ref)
    scale = np.abs(ref)
    allowed = atol + rtol * scale
    if noise is not None:
        allowed = allowed + np.broadcast_to(noise, reference.shape).ravel()[finite]
    outside = error > allowed
    comparison.mismatched = int(outside.sum()) + nonfinite_mismatched

    nonzero = scale > 0
    comparison.max_abs_error = float(error.max()) if error.size else 0.0
    comparison.max_rel_error = float((error[nonzero] / scale[nonzero]).max()) if nonzero.any() else 0.0
    comparison.mean_abs_error = float(error.mean()) if error.size else 0.0
    comparison.cosine_similarity = _cosine(ref, cand)
    comparison.error_ratio = _error_ratio(error, allowed)
    comparison.min_atol = float(max(0.0, (error - rtol * scale).max())) if error.size else 0.0
    beyond_atol = error > atol
    if not beyond_atol.any():
        comparison.min_rtol = 0.0
    elif (scale[beyond_atol] == 0).any():
        comparison.min_rtol = float("inf")
    else:
        comparison.min_rtol = float(((error[beyond_atol] - atol) / scale[beyond_atol]).max())
    if nonfinite_mismatched:
        comparison.max_abs_error = comparison.min_atol = comparison.min_rtol = float("inf")
        comparison.error_ratio = float("inf")
    elif comparison.elements and not comparison.compared_elements:
        comparison.problem = (f"nothing finite to compare: all {comparison.elements} elements are NaN or inf on "
                              "both sides, which proves nothing (feed real data with --inputs)")
    return comparison


def _channel_mean_error(shape, ref: np.ndarray, cand: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Mean |cand - ref| of each channel (axis 1) over its finite elements."""
    error = np.where(finite, np.abs(cand - ref), 0.0).reshape(shape)
    counts = finite.reshape(shape)
    axes = tuple(axis for axis in range(len(shape)) if axis != 1)
    return error.sum(axis=axes) / np.maximum(1, counts.sum(axis=axes))


def _error_ratio(error: np.ndarray, allowed) -> float:
    if not error.size:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(error == 0, 0.0, error / allowed)
    return float(ratio.max())


def _cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of the flattened values; 1 when both are all zero, 0 when only one is."""
    norms = np.linalg.norm(reference) * np.linalg.norm(candidate)
    if norms == 0:
        return 1.0 if not reference.any() and not candidate.any() else 0.0
    return float(np.real(np.vdot(reference, candidate)) / norms)


def compare_value(name: str, reference, candidate, atol: Tolerance, rtol: Tolerance, *, flowing=None,
                  exact=None) -> OutputComparison:
    """Compare one tensor or one non-tensor value (sequence, map, sequence of maps) with the tolerance rule.

    With default tolerances, `flowing` (a float dtype less precise than the tensor's own, which flows into it) sets
    the dtype the tolerance is taken from, and `exact` (the same tensor of the reference evaluated in float64;
    see checking.noise) widens every element's and channel's allowance by NOISE_MULTIPLE times the reference's own
    distance from it."""
    if is_tensor(reference) and is_tensor(candidate):
        reference, candidate = np.asarray(reference), np.asarray(candidate)
        dtype = tolerance_dtype(reference.dtype, flowing)
        base_atol = resolve_tolerance(atol, name, dtype, 0)
        output_rtol = resolve_tolerance(rtol, name, dtype, 1)
        if not is_default(atol, name):
            return compare_array(name, reference, candidate, base_atol, output_rtol)
        element_atol, channel_atol = base_atol * output_peak(reference), channel_tolerance(reference, base_atol)
        noise = _noise(reference, exact)
        if noise is not None and channel_atol is not None:
            channel_atol = channel_atol + NOISE_MULTIPLE * noise[1]
        comparison = compare_array(name, reference, candidate, element_atol, output_rtol, channel_atol,
                                   None if noise is None else NOISE_MULTIPLE * noise[0])
        comparison.tolerance_dtype = None if dtype == reference.dtype else dtype.name
        comparison.noise_floor = None if noise is None else float(np.max(noise[0]))
        return comparison
    return _compare_structure(name, reference, candidate, atol, rtol)


def _noise(reference: np.ndarray, exact) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The reference's distance from its exact values, over finite elements: (largest |exact - reference| of each
    channel of axis 1, shaped to broadcast over the tensor (the whole tensor's for rank < 2), mean of each channel
    [C] (empty for rank < 2)); None when there is no exact tensor of the same shape. Per channel, so a noisy
    channel does not widen a quiet one, where a wrong fold would show; the whole tensor's where a channel has fewer
    than MIN_CHANNEL_ELEMENTS elements (its few elements say nothing of its noise)."""
    if exact is None:
        return None
    exact = np.asarray(exact)
    if exact.shape != reference.shape or not is_float(reference.dtype) or not reference.size:
        return None
    ref, other = as_comparable(reference), as_comparable(exact)
    finite = np.isfinite(ref) & np.isfinite(other)
    error = np.where(finite, np.abs(other - ref), 0.0)
    if reference.ndim < 2 or reference.size // max(1, reference.shape[1]) < MIN_CHANNEL_ELEMENTS:
        # Too few elements per channel for a channel's own noise to be measured: the tensor's is used.
        return np.asarray(error.max()), np.zeros(0)
    axes = tuple(axis for axis in range(reference.ndim) if axis != 1)
    means = _channel_mean_error(reference.shape, ref.ravel(), other.ravel(), finite.ravel())
    return error.max(axis=axes, keepdims=True), means


def is_tensor(value) -> bool:
    return isinstance(value, (np.ndarray, np.generic, int, float, bool))


def _compare_structure(name: str, reference, candidate, atol: Tolerance, rtol: Tolerance) -> OutputComparison:
    """Sequences and maps: same structure and keys, then every number inside compared as one float vector."""
    reference_leaves, reference_shape = _flatten(reference)
    candidate_leaves, candidate_shape = _flatten(candidate)
    kind = type(reference).__name__
    if reference_shape != candidate_shape:
        comparison = OutputComparison(name, None, kind, 0.0, 0.0)
        comparison.problem = "structure differs (sequence lengths, map keys or element types)"
        return comparison
    numbers = [leaf for leaf in reference_leaves if _is_number_leaf(leaf)]
    dtypes = [np.asarray(leaf).dtype for leaf in numbers if isinstance(leaf, (np.ndarray, np.generic))]
    dtype = dtypes[0] if dtypes else _PYTHON_FLOAT_DTYPE
    numeric = all(_is_number_leaf(leaf) for leaf in reference_leaves)
    if numeric and reference_leaves:
        ref = np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in reference_leaves])
        cand = np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in candidate_leaves])
        base_atol = resolve_tolerance(atol, name, dtype, 0)
        if is_default(atol, name):
            base_atol *= output_peak(ref)
        comparison = compare_array(name, ref, cand, base_atol, resolve_tolerance(rtol, name, dtype, 1))
    else:
        comparison = OutputComparison(name, None, kind, 0.0, 0.0, elements=len(reference_leaves))
        comparison.mismatched = sum(not _leaf_equal(a, b) for a, b in zip(reference_leaves, candidate_leaves))
    comparison.shape, comparison.dtype = None, f"{kind} of {len(reference_leaves)} values"
    return comparison


def _flatten(value) -> Tuple[List, tuple]:
    """The leaves of nested lists/tuples/dicts in order, and a hashable outline (lengths, keys, leaf kinds)."""
    leaves: List = []

    def walk(item):
        if isinstance(item, Mapping):
            keys = sorted(item, key=repr)
            return ("map", tuple((key, walk(item[key])) for key in keys))
        if isinstance(item, (list, tuple)):
            return ("seq", tuple(walk(element) for element in item))
        leaves.append(item)
        shape = tuple(np.shape(item))
        return ("number" if _is_number_leaf(item) else "other", shape)

    return leaves, walk(value)


def _is_number_leaf(leaf) -> bool:
    if isinstance(leaf, bool):
        return False
    if isinstance(leaf, (int, float)):
        return True
    if isinstance(leaf, (np.ndarray, np.generic)):
        return is_float(np.asarray(leaf).dtype) or np.issubdtype(np.asarray(leaf).dtype, np.integer)
    return False


def _leaf_equal(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def compare_outputs(
    reference: Mapping[str, object],
    candidate: Mapping[str, object],
    *,
    atol: Tolerance = None,
    rtol: Tolerance = None,
    reference_label: str = "reference",
    candidate_label: str = "candidate",
    flowing: Optional[Mapping[str, np.dtype]] = None,
    exact: Optional[Mapping[str, object]] = None,
) -> VerifyResult:
    """Compare two sets of outputs by name. Never raises for a mismatch: see VerifyResult.passed.

    atol/rtol: a float for every output, or {output name: float, None: global float}; unset values fall back
    to DEFAULT_TOLERANCES by the reference output's dtype (or a less precise one flowing into it: `flowing`),
    scaled by the data (see the module docstring); `exact` widens them by the reference's own rounding noise
    (see compare_value). Raises UsageError for a tolerance naming no output.
    """
    only_in_reference = [name for name in reference if name not in candidate]
    only_in_candidate = [name for name in candidate if name not in reference]
    names = list(reference) + only_in_candidate
    check_tolerance(atol, "atol", names)
    check_tolerance(rtol, "rtol", names)
    outputs = []
    for name in names:
        if name in only_in_reference or name in only_in_candidate:
            source = reference if name in reference else candidate
            value = source[name]
            dtype = np.asarray(value).dtype if is_tensor(value) else None
            shape = tuple(np.shape(value)) if is_tensor(value) else None
            comparison = OutputComparison(name, shape, dtype.name if dtype is not None else type(value).__name__,
                                          resolve_tolerance(atol, name, dtype or _PYTHON_FLOAT_DTYPE, 0),
                                          resolve_tolerance(rtol, name, dtype or _PYTHON_FLOAT_DTYPE, 1))
            if name in only_in_reference:
                instead = f" (it has {only_in_candidate} instead)" if only_in_candidate else ""
                comparison.problem = f"missing from {candidate_label}{instead}"
            else:
                comparison.problem = f"only in {candidate_label}, not in {reference_label}"
            outputs.append(comparison)
            continue
        outputs.append(compare_value(name, reference[name], candidate[name], atol, rtol,
                                     flowing=(flowing or {}).get(name), exact=(exact or {}).get(name)))
    return VerifyResult(outputs, reference_label, candidate_label)


def compare_intermediates(names: Sequence[str], reference: Mapping[str, np.ndarray],
                          candidate: Mapping[str, np.ndarray], *, atol: Tolerance = None,
                          rtol: Tolerance = None, flowing: Optional[Mapping[str, np.dtype]] = None,
                          exact: Optional[Mapping[str, np.ndarray]] = None) -> List[OutputComparison]:
    """Intermediate tensors, in the given (graph) order: a global atol/rtol the caller gave applies to them too
    (per-output overrides do not), else each follows its own data. A tensor that passes a quick check in its own
    dtype gets counts only; the full metrics (float64, several passes) are computed for the ones that fail."""
    atol, rtol = _global(atol), _global(rtol)
    flowing, exact = flowing or {}, exact or {}
    comparisons = []
    for name in names:
        if name not in reference or name not in candidate:
            continue
        ref, cand = np.asarray(reference[name]), np.asarray(candidate[name])
        quick = _quick_pass(ref, cand, atol, rtol, flowing.get(name)) if name not in exact else None
        if quick is None:
            comparisons.append(compare_value(name, ref, cand, atol, rtol, flowing=flowing.get(name),
                                             exact=exact.get(name)))
        else:
            quick.name = name
            comparisons.append(quick)
    return comparisons


def _quick_pass(reference: np.ndarray, candidate: np.ndarray, atol: Optional[float],
                rtol: Optional[float], flowing=None) -> Optional[OutputComparison]:
    """A counts-only comparison when every element and channel is clearly within tolerance, else None."""
    if reference.shape != candidate.shape or reference.dtype != candidate.dtype or \
            reference.dtype.kind != "f" or not reference.size:
        return None
    dtype = tolerance_dtype(reference.dtype, flowing)
    base_atol = default_tolerance(dtype)[0] if atol is None else float(atol)
    element_rtol = default_tolerance(dtype)[1] if rtol is None else float(rtol)
    magnitude = np.abs(reference)
    peak = float(magnitude.max())
    if not np.isfinite(peak):
        return None
    element_atol = base_atol * max(1.0, peak) if atol is None else base_atol
    error = np.abs(candidate - reference)
    if not (error <= element_atol + element_rtol * magnitude).all():  # NaN compares False: the full path says why
        return None
    channel_atol = channel_tolerance(reference, base_atol) if atol is None else None
    if channel_atol is not None:
        axes = tuple(axis for axis in range(reference.ndim) if axis != 1)
        if not (error.mean(axis=axes, dtype=np.float64) <= channel_atol).all():
            return None
    return OutputComparison("", tuple(reference.shape), reference.dtype.name, element_atol, element_rtol,
                            per_channel=channel_atol is not None, elements=reference.size,
                            compared_elements=reference.size)


def _global(value: Tolerance) -> Optional[float]:
    return value.get(None) if isinstance(value, Mapping) else value
