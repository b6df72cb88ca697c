"""Numerical equivalence of two models: run both in ONNX Runtime on the same inputs and compare every output.

    result = bnfold.verify("model.onnx", "folded.onnx")
    assert result.passed, result.summary()

An element passes when |candidate - reference| <= atol + rtol * |reference| (numpy.isclose with the reference
as the scale). NaN in the same place on both sides, and the same infinity on both sides, count as equal;
a NaN or infinity on one side only fails. The metrics (max/mean abs error, max rel error, cosine similarity,
min atol/rtol) are computed over the elements finite on both sides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InvalidModelError, UsageError
from .tolerances import DEFAULT_TOLERANCES

# Float dtypes numpy does not class as np.floating (from ml_dtypes) share the bfloat16 row.
_LOW_PRECISION_FLOATS = ("bfloat16", "float8", "float4")

ModelLike = Union[str, "os.PathLike[str]", "onnx.ModelProto"]  # noqa: F821 - onnx is imported lazily
Tolerance = Union[None, float, Mapping[Optional[str], float]]


def output_peak(array: np.ndarray) -> float:
    """max(1, largest finite |value|): default atols scale with it, because a fold's rounding error grows with the
    magnitude of the activations (a float32 ResNet-50 with logits near 1e4 differs by ~5e-3 after any exact
    refactoring, ORT's own Conv+BN fusion included), while a wrong fold shows as a relative error of its size."""
    array = np.asarray(array)
    if array.size == 0 or not _is_float(array.dtype):
        return 1.0
    finite = np.abs(array[np.isfinite(array)].astype(np.float64))
    return max(1.0, float(finite.max())) if finite.size else 1.0


def _is_default(value: Tolerance, output: str) -> bool:
    if isinstance(value, Mapping):
        return output not in value and value.get(None) is None
    return value is None


def default_tolerance(dtype: np.dtype) -> Tuple[float, float]:
    """(atol, rtol) for an output of this dtype when the user gave none."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        dtype = np.dtype(f"float{dtype.itemsize * 4}")
    if dtype.name in DEFAULT_TOLERANCES:
        return DEFAULT_TOLERANCES[dtype.name]
    if _is_float(dtype):
        return DEFAULT_TOLERANCES["bfloat16"]
    return DEFAULT_TOLERANCES["exact"]


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.inexact) or dtype.name.startswith(_LOW_PRECISION_FLOATS)


@dataclass
class OutputComparison:
    """How one output of the candidate compares with the reference, over all runs.

    min_atol: the smallest atol that passes every element with the rtol used (max(|a-b| - rtol*|ref|), >= 0).
    min_rtol: the smallest rtol that passes every element with the atol used (max((|a-b| - atol) / |ref|));
      inf when an element beyond atol has a zero reference.
    max_rel_error: max |a-b| / |ref| over elements whose reference is non-zero.
    A NaN/inf on one side only makes max_abs_error, min_atol and min_rtol inf and counts as mismatched.
    `problem` is set, and the metrics are None, when the output is missing on one side or its shape/dtype differ.
    """

    name: str
    shape: Optional[Tuple[int, ...]]
    dtype: Optional[str]
    atol: float
    rtol: float
    elements: int = 0
    compared_elements: int = 0  # finite on both sides: the elements the error metrics cover
    mismatched: int = 0  # outside tolerance, including NaN/inf on one side only
    max_abs_error: Optional[float] = None
    max_rel_error: Optional[float] = None
    mean_abs_error: Optional[float] = None
    cosine_similarity: Optional[float] = None
    min_atol: Optional[float] = None
    min_rtol: Optional[float] = None
    reference_nan: int = 0
    reference_inf: int = 0
    candidate_nan: int = 0
    candidate_inf: int = 0
    nonfinite_mismatched: int = 0
    problem: Optional[str] = None

    @property
    def passed(self) -> bool:
        return self.problem is None and self.mismatched == 0

    def merged(self, other: "OutputComparison") -> "OutputComparison":
        """This output's comparison over two runs: worst case of each metric, sums of the counts."""
        if self.problem or other.problem:
            return self if self.problem else other
        if self.max_abs_error is None:  # a non-numeric output has counts only
            return replace(self, elements=self.elements + other.elements, mismatched=self.mismatched + other.mismatched)
        compared = self.compared_elements + other.compared_elements
        mean = (
            (self.mean_abs_error * self.compared_elements + other.mean_abs_error * other.compared_elements) / compared
            if compared
            else 0.0
        )
        return replace(
            self,
            elements=self.elements + other.elements,
            compared_elements=compared,
            mismatched=self.mismatched + other.mismatched,
            max_abs_error=max(self.max_abs_error, other.max_abs_error),
            max_rel_error=max(self.max_rel_error, other.max_rel_error),
            mean_abs_error=mean,
            cosine_similarity=min(self.cosine_similarity, other.cosine_similarity),
            min_atol=max(self.min_atol, other.min_atol),
            min_rtol=max(self.min_rtol, other.min_rtol),
            reference_nan=self.reference_nan + other.reference_nan,
            reference_inf=self.reference_inf + other.reference_inf,
            candidate_nan=self.candidate_nan + other.candidate_nan,
            candidate_inf=self.candidate_inf + other.candidate_inf,
            nonfinite_mismatched=self.nonfinite_mismatched + other.nonfinite_mismatched,
        )

    def to_dict(self) -> dict:
        data = {name: _json_number(getattr(self, name)) for name in self.__dataclass_fields__}
        data["shape"] = list(self.shape) if self.shape is not None else None
        data["passed"] = self.passed
        return data


@dataclass
class VerifyResult:
    """The comparison of every output; `problems` holds model-level mismatches (inputs that differ, ...)."""

    outputs: List[OutputComparison]
    reference_label: str = "reference"
    candidate_label: str = "candidate"
    runs: int = 1
    seed: Optional[int] = None
    ort_opt_level: Optional[str] = None
    problems: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and all(output.passed for output in self.outputs)

    @property
    def failed_outputs(self) -> List[str]:
        return [output.name for output in self.outputs if not output.passed]

    def merged(self, other: "VerifyResult") -> "VerifyResult":
        """Combine the results of two runs of the same pair of models."""
        others = {output.name: output for output in other.outputs}
        outputs = [output.merged(others[output.name]) if output.name in others else output for output in self.outputs]
        return replace(
            self,
            outputs=outputs,
            runs=self.runs + other.runs,
            problems=self.problems + [p for p in other.problems if p not in self.problems],
        )

    def summary(self) -> str:
        """A table of every output, the notes it needs, and a final line starting PASSED or FAILED."""
        header = f"reference: {self.reference_label}\ncandidate: {self.candidate_label}"
        details = [f"{self.runs} run{'s' if self.runs != 1 else ''}"]
        if self.seed is not None:
            details.append(f"seed {self.seed}")
        if self.ort_opt_level is not None:
            details.append(f"ORT optimization level: {self.ort_opt_level}")
        lines = [header + f"\n({', '.join(details)})", ""]
        if self.outputs:
            lines.append(_table(self.outputs))
        notes = [f"{self.candidate_label}: {problem}" for problem in self.problems]
        for output in self.outputs:
            notes.extend(_output_notes(output, self.candidate_label))
        if notes:
            lines += [""] + [f"  {note}" for note in notes]
        lines.append("")
        if self.passed:
            lines.append(f"PASSED: {len(self.outputs)} output{'s' if len(self.outputs) != 1 else ''} within tolerance")
        else:
            failed = self.failed_outputs
            if failed:
                lines.append(f"FAILED: {len(failed)} of {len(self.outputs)} outputs differ ({', '.join(failed)})")
            else:
                lines.append("FAILED: models differ")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready: non-finite numbers become the strings "inf", "-inf", "nan"."""
        return {
            "passed": self.passed,
            "reference": self.reference_label,
            "candidate": self.candidate_label,
            "runs": self.runs,
            "seed": self.seed,
            "ort_opt_level": self.ort_opt_level,
            "problems": list(self.problems),
            "failed_outputs": self.failed_outputs,
            "outputs": [output.to_dict() for output in self.outputs],
        }


def _json_number(value):
    if isinstance(value, float) and not np.isfinite(value):
        return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _format_number(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.2e}"


def _table(outputs: Sequence[OutputComparison]) -> str:
    columns = ["output", "shape", "dtype", "max abs", "max rel", "mean abs", "cosine", "outside tol",
               "atol", "rtol", "min atol", "min rtol", "result"]
    rows = []
    for output in outputs:
        shape = "x".join(str(d) for d in output.shape) if output.shape else ("scalar" if output.shape == () else "-")
        cosine = "-" if output.cosine_similarity is None else f"{output.cosine_similarity:.8f}"
        outside = "-" if output.problem else f"{output.mismatched}/{output.elements}"
        rows.append([
            output.name, shape, output.dtype or "-",
            _format_number(output.max_abs_error), _format_number(output.max_rel_error),
            _format_number(output.mean_abs_error), cosine, outside,
            _format_number(output.atol), _format_number(output.rtol),
            _format_number(output.min_atol), _format_number(output.min_rtol),
            "ok" if output.passed else "FAIL",
        ])
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [columns, *rows])


def _output_notes(output: OutputComparison, candidate_label: str) -> List[str]:
    notes = []
    if output.problem:
        notes.append(f"{output.name}: {output.problem}")
    if output.reference_nan or output.reference_inf:
        notes.append(
            f"{output.name}: reference has {output.reference_nan} NaN and {output.reference_inf} inf values "
            f"(candidate: {output.candidate_nan} NaN, {output.candidate_inf} inf); "
            "matching NaN/inf positions count as equal"
        )
    if output.nonfinite_mismatched:
        notes.append(
            f"{output.name}: {output.nonfinite_mismatched} element(s) are NaN/inf on one side only "
            f"or differ in NaN/inf ({candidate_label} vs reference)"
        )
    return notes


def resolve_tolerance(value: Tolerance, output: str, dtype: np.dtype, which: int) -> float:
    """The tolerance for one output: its own override, else the global value, else the dtype default."""
    if isinstance(value, Mapping):
        if output in value:
            return float(value[output])
        value = value.get(None)
    if value is None:
        return default_tolerance(dtype)[which]
    return float(value)


def _check_tolerance(value: Tolerance, option: str, names: Sequence[str]) -> None:
    overrides = value if isinstance(value, Mapping) else {None: value}
    unknown = sorted(name for name in overrides if name is not None and name not in names)
    if unknown:
        raise UsageError(f"{option} names unknown output(s) {unknown}; the outputs are: {', '.join(names)}")
    for name, number in overrides.items():
        if number is not None and not (float(number) >= 0):
            label = f" for {name!r}" if name is not None else ""
            raise UsageError(f"{option}{label} must be a non-negative number, got {number!r}")


def _as_comparable(array: np.ndarray) -> np.ndarray:
    """float64 (complex128 for complex) so integer differences cannot overflow and low-precision floats widen."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.complexfloating):
        return array.astype(np.complex128)
    return array.astype(np.float64)


def compare_array(
    name: str, reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float
) -> OutputComparison:
    """Compare one output: structural checks first, then the element-wise metrics (see OutputComparison)."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    comparison = OutputComparison(name, tuple(reference.shape), reference.dtype.name, atol, rtol)
    if reference.shape != candidate.shape:
        comparison.problem = (
            f"shape differs: reference {_shape_text(reference.shape)}, candidate {_shape_text(candidate.shape)}"
        )
        return comparison
    if reference.dtype != candidate.dtype:
        comparison.problem = f"dtype differs: reference {reference.dtype.name}, candidate {candidate.dtype.name}"
        return comparison
    comparison.elements = reference.size
    if not (np.issubdtype(reference.dtype, np.number) or reference.dtype == np.bool_ or _is_float(reference.dtype)):
        # Strings and other non-numeric outputs (labels of classic-ML models) must match exactly.
        comparison.mismatched = int((reference != candidate).sum())
        return comparison
    ref, cand = _as_comparable(reference).ravel(), _as_comparable(candidate).ravel()

    ref_nan, cand_nan = np.isnan(ref), np.isnan(cand)
    ref_inf, cand_inf = np.isinf(ref), np.isinf(cand)
    comparison.reference_nan, comparison.candidate_nan = int(ref_nan.sum()), int(cand_nan.sum())
    comparison.reference_inf, comparison.candidate_inf = int(ref_inf.sum()), int(cand_inf.sum())
    finite = np.isfinite(ref) & np.isfinite(cand)
    nonfinite_equal = (ref_nan & cand_nan) | (ref_inf & cand_inf & (ref == cand))
    nonfinite_mismatched = int((~finite & ~nonfinite_equal).sum())
    comparison.nonfinite_mismatched = nonfinite_mismatched

    ref, cand = ref[finite], cand[finite]
    comparison.compared_elements = ref.size
    error = np.abs(cand - ref)
    scale = np.abs(ref)
    outside = error > atol + rtol * scale
    comparison.mismatched = int(outside.sum()) + nonfinite_mismatched

    nonzero = scale > 0
    comparison.max_abs_error = float(error.max()) if error.size else 0.0
    comparison.max_rel_error = float((error[nonzero] / scale[nonzero]).max()) if nonzero.any() else 0.0
    comparison.mean_abs_error = float(error.mean()) if error.size else 0.0
    comparison.cosine_similarity = _cosine(ref, cand)
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
    return comparison


def _cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of the flattened outputs; 1 when both are all zero, 0 when only one is."""
    norms = np.linalg.norm(reference) * np.linalg.norm(candidate)
    if norms == 0:
        return 1.0 if not reference.any() and not candidate.any() else 0.0
    return float(np.real(np.vdot(reference, candidate)) / norms)


def _shape_text(shape: Tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    *,
    atol: Tolerance = None,
    rtol: Tolerance = None,
    reference_label: str = "reference",
    candidate_label: str = "candidate",
) -> VerifyResult:
    """Compare two sets of outputs by name (pure numpy). Never raises for a mismatch: see VerifyResult.passed.

    atol/rtol: a float for every output, or {output name: float, None: global float}; unset values fall back
    to DEFAULT_TOLERANCES by the reference output's dtype. Raises UsageError for a tolerance naming no output.
    """
    only_in_reference = [name for name in reference if name not in candidate]
    only_in_candidate = [name for name in candidate if name not in reference]
    names = list(reference) + only_in_candidate
    _check_tolerance(atol, "atol", names)
    _check_tolerance(rtol, "rtol", names)
    outputs = []
    for name in names:
        source = reference if name in reference else candidate
        dtype = np.asarray(source[name]).dtype
        output_atol = resolve_tolerance(atol, name, dtype, 0)
        if _is_default(atol, name):
            output_atol *= output_peak(source[name])
        output_rtol = resolve_tolerance(rtol, name, dtype, 1)
        if name in only_in_reference or name in only_in_candidate:
            comparison = OutputComparison(name, tuple(np.shape(source[name])), dtype.name, output_atol, output_rtol)
            if name in only_in_reference:
                instead = f" (it has {only_in_candidate} instead)" if only_in_candidate else ""
                comparison.problem = f"missing from {candidate_label}{instead}"
            else:
                comparison.problem = f"only in {candidate_label}, not in {reference_label}"
            outputs.append(comparison)
            continue
        outputs.append(compare_array(name, reference[name], candidate[name], output_atol, output_rtol))
    return VerifyResult(outputs, reference_label, candidate_label)


def run_model(model, feeds: Mapping[str, np.ndarray], *, ort_opt_level: str = "disable") -> Dict[str, np.ndarray]:
    """Run a ModelProto or model path once on CPU in ONNX Runtime; outputs by name."""
    from .runtime import make_session, run

    return run(make_session(model, opt_level=ort_opt_level), dict(feeds))


def _load(model: ModelLike, default_label: str):
    """(ModelProto, what to give ORT, label): paths keep their path for ORT, so models over 2 GiB still load."""
    from .loading import load_model

    if isinstance(model, (str, os.PathLike)):
        return load_model(model), os.fspath(model), os.fspath(model)
    if not hasattr(model, "graph"):
        raise UsageError(f"{default_label} must be a path or an onnx.ModelProto, got {type(model).__name__}")
    return model, model, default_label


def _input_problems(reference_specs, candidate_specs, feeds: Mapping[str, np.ndarray]) -> List[str]:
    """Why the candidate cannot take the reference's inputs, if it cannot."""
    candidate_by_name = {spec.name: spec for spec in candidate_specs}
    reference_names = [spec.name for spec in reference_specs]
    problems = []
    if set(candidate_by_name) != set(reference_names):
        problems.append(
            f"inputs differ: reference has {reference_names}, candidate has {list(candidate_by_name)}"
        )
    for spec in reference_specs:
        other = candidate_by_name.get(spec.name)
        if other is None:
            continue
        if other.dtype != spec.dtype:
            problems.append(
                f"input {spec.name!r} dtype differs: reference {spec.dtype.name}, candidate {other.dtype.name}"
            )
        elif other.dims and not _fits(other.dims, feeds[spec.name].shape):
            problems.append(
                f"input {spec.name!r}: candidate declares shape {_dims_text(other.dims)}, "
                f"which does not accept the reference's {_shape_text(feeds[spec.name].shape)}"
            )
    return problems


def _fits(dims, shape: Tuple[int, ...]) -> bool:
    return len(dims) == len(shape) and all(not isinstance(d, int) or d == s for d, s in zip(dims, shape))


def _dims_text(dims) -> str:
    return "x".join(str(d) if d is not None else "?" for d in dims)


def _check_provided(specs, provided: Mapping[str, np.ndarray]) -> None:
    """User data must fit the model's declared input shapes; ORT's own message would not say which input."""
    for spec in specs:
        if spec.name in provided and spec.dims and not _fits(spec.dims, np.shape(provided[spec.name])):
            raise UsageError(
                f"data for input {spec.name!r} has shape {_shape_text(np.shape(provided[spec.name]))}, "
                f"but the model declares {_dims_text(spec.dims)}"
            )


def verify(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    input_shapes: Union[None, Mapping[Optional[str], Sequence[int]], Sequence[str]] = None,
    inputs: Optional[Mapping[str, np.ndarray]] = None,
    input_files: Sequence[str] = (),
    atol: Tolerance = None,
    rtol: Tolerance = None,
    runs: int = 1,
    seed: int = 0,
    ort_opt_level: str = "disable",
    candidate_label: Optional[str] = None,
) -> VerifyResult:
    """Run both models in ONNX Runtime CPU on the same inputs and compare every output by name.

    Inputs not given (as arrays in `inputs` or files in `input_files`: .npz by input name, NAME:file.npy) are
    seeded random data; run i uses seed + i. Dynamic dims take `input_shapes` ({name: shape} or
    ["name:8x3x224x224"]), else batch 1 for a dynamic first dim. When every input is given, one run is made.
    ORT graph optimizations are off by default: ORT would otherwise fuse Conv+BN in the reference itself.
    Returns the result for mismatches; raises a BnfoldError for bad usage or a model that cannot be loaded or run.
    Models are labelled by their path, or "reference"/"candidate" (candidate_label overrides the latter).
    """
    from .inputs import graph_inputs, load_input_files, make_inputs, parse_shape_specs

    if runs < 1:
        raise UsageError(f"runs must be at least 1, got {runs}")
    reference_model, reference_source, reference_label = _load(reference, "reference")
    candidate_model, candidate_source, candidate_label = _load(candidate, candidate_label or "candidate")
    if isinstance(input_shapes, (list, tuple)):
        if not all(isinstance(text, str) for text in input_shapes):
            raise UsageError("input_shapes must be {name: shape} or a list of 'name:D0xD1x...' strings")
        input_shapes = parse_shape_specs(input_shapes)
    reference_specs = graph_inputs(reference_model)
    provided = dict(load_input_files(input_files, reference_specs)) if input_files else {}
    provided.update(inputs or {})
    unknown = set(provided) - {spec.name for spec in reference_specs}
    if unknown:
        raise UsageError(
            f"input data names unknown input(s) {sorted(unknown)}; the model's inputs are: "
            f"{[spec.name for spec in reference_specs]}"
        )
    _check_provided(reference_specs, provided)
    all_provided = all(spec.name in provided for spec in reference_specs)
    if all_provided:
        runs = 1

    result = None
    for run_index in range(runs):
        feeds = make_inputs(reference_model, shapes=input_shapes, provided=provided, seed=seed + run_index)
        problems = _input_problems(reference_specs, graph_inputs(candidate_model), feeds)
        if problems:
            result = VerifyResult([], reference_label, candidate_label, problems=problems)
            break
        reference_outputs = _run_labelled(reference_source, feeds, ort_opt_level, reference_label)
        candidate_outputs = _run_labelled(candidate_source, feeds, ort_opt_level, candidate_label)
        run_result = compare_outputs(
            reference_outputs, candidate_outputs, atol=atol, rtol=rtol,
            reference_label=reference_label, candidate_label=candidate_label,
        )
        result = run_result if result is None else result.merged(run_result)
    result.seed = None if all_provided else seed
    result.ort_opt_level = ort_opt_level
    return result


def _run_labelled(source, feeds, ort_opt_level: str, label: str) -> Dict[str, np.ndarray]:
    """run_model, with the model's label in the error: a user comparing two files needs to know which failed."""
    try:
        return run_model(source, feeds, ort_opt_level=ort_opt_level)
    except InvalidModelError as error:
        raise InvalidModelError(f"{label}: {error}") from None
