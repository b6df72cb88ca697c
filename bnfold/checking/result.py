"""What an end-to-end check found, as data (OutputComparison, VerifyResult) and as the table and JSON users read."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..tables import format_table
from ..tolerances import NOISE_MULTIPLE, SIGNAL_FACTOR


@dataclass
class OutputComparison:
    """How one tensor (a graph output, or an intermediate both models share by name) compares, over all runs.

    per_channel: whether each channel's mean error was also checked against the channel's own scale (axis 1);
      channels_outside counts the channels beyond it, channel_error_ratio is the worst mean error / tolerance.
    error_ratio: max |a-b| / (atol + rtol * |ref|) over elements; <= 1 passes.
    min_atol: the smallest single atol that passes every element with the rtol used (max(|a-b| - rtol*|ref|), >= 0).
    min_rtol: the smallest rtol that passes every element with the atol used (max((|a-b| - atol) / |ref|));
      inf when an element beyond atol has a zero reference.
    max_rel_error: max |a-b| / |ref| over elements whose reference is non-zero.
    A NaN/inf on one side only makes max_abs_error, min_atol and min_rtol inf and counts as mismatched.
    `problem` is set, and the metrics are None, when the tensor is missing on one side, its shape/dtype differ,
    or it holds nothing finite to compare.
    """

    name: str
    shape: Optional[Tuple[int, ...]]
    dtype: Optional[str]
    atol: float
    rtol: float
    per_channel: bool = False
    elements: int = 0
    compared_elements: int = 0  # finite on both sides: the elements the error metrics cover
    mismatched: int = 0  # outside tolerance, including NaN/inf on one side only
    max_abs_error: Optional[float] = None
    max_rel_error: Optional[float] = None
    mean_abs_error: Optional[float] = None
    cosine_similarity: Optional[float] = None
    error_ratio: Optional[float] = None
    min_atol: Optional[float] = None
    min_rtol: Optional[float] = None
    reference_nan: int = 0
    reference_inf: int = 0
    candidate_nan: int = 0
    candidate_inf: int = 0
    nonfinite_mismatched: int = 0
    channels_outside: int = 0
    channel_error_ratio: Optional[float] = None
    problem: Optional[str] = None
    tolerance_dtype: Optional[str] = None  # a less precise dtype flowing into the tensor, whose tolerance it got
    noise_floor: Optional[float] = None  # max |reference - its float64 evaluation|, where that was measured

    @property
    def passed(self) -> bool:
        return self.problem is None and self.mismatched == 0 and self.channels_outside == 0

    def merged(self, other: "OutputComparison") -> "OutputComparison":
        """This tensor's comparison over two runs: worst case of each metric, sums of the counts."""
        if self.problem or other.problem:
            return self if self.problem else other
        if self.max_abs_error is None or other.max_abs_error is None:
            # Non-numeric values, and intermediates that passed a quick check, have counts only.
            detailed = other if self.max_abs_error is None else self
            return replace(detailed, elements=self.elements + other.elements,
                           compared_elements=self.compared_elements + other.compared_elements,
                           mismatched=self.mismatched + other.mismatched,
                           channels_outside=self.channels_outside + other.channels_outside)
        compared = self.compared_elements + other.compared_elements
        mean = (
            (self.mean_abs_error * self.compared_elements + other.mean_abs_error * other.compared_elements) / compared
            if compared
            else 0.0
        )
        return replace(
            self,
            atol=max(self.atol, other.atol),
            channels_outside=self.channels_outside + other.channels_outside,
            channel_error_ratio=max(self.channel_error_ratio or 0.0, other.channel_error_ratio or 0.0)
            if self.per_channel else None,
            elements=self.elements + other.elements,
            compared_elements=compared,
            mismatched=self.mismatched + other.mismatched,
            max_abs_error=max(self.max_abs_error, other.max_abs_error),
            max_rel_error=max(self.max_rel_error, other.max_rel_error),
            mean_abs_error=mean,
            cosine_similarity=min(self.cosine_similarity, other.cosine_similarity),
            error_ratio=max(self.error_ratio, other.error_ratio),
            min_atol=max(self.min_atol, other.min_atol),
            min_rtol=max(self.min_rtol, other.min_rtol),
            reference_nan=self.reference_nan + other.reference_nan,
            reference_inf=self.reference_inf + other.reference_inf,
            candidate_nan=self.candidate_nan + other.candidate_nan,
            candidate_inf=self.candidate_inf + other.candidate_inf,
            nonfinite_mismatched=self.nonfinite_mismatched + other.nonfinite_mismatched,
        )

    def to_dict(self) -> dict:
        data = {name: json_number(getattr(self, name)) for name in self.__dataclass_fields__}
        data["shape"] = list(self.shape) if self.shape is not None else None
        data["passed"] = self.passed
        return data


@dataclass
class VerifyResult:
    """The comparison of every output and of the intermediates both models share; `problems` holds model-level
    mismatches (inputs that differ, ...). `input_shapes` are the shapes the models ran with and `shape_notes` how
    dynamic dims were chosen. `first_divergence` names the first intermediate, in the reference's graph order,
    outside tolerance, and `divergence_source` the BatchNormalization fold that produced it where known."""

    outputs: List[OutputComparison]
    reference_label: str = "reference"
    candidate_label: str = "candidate"
    runs: int = 1
    seed: Optional[int] = None
    ort_opt_level: Optional[str] = None
    problems: List[str] = field(default_factory=list)
    intermediates: List[OutputComparison] = field(default_factory=list)
    intermediates_checked: bool = False
    first_divergence: Optional[str] = None
    divergence_source: Optional[str] = None
    input_shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    shape_notes: List[str] = field(default_factory=list)
    branch_inputs: Dict[str, List[bool]] = field(default_factory=dict)
    evidence: Dict[str, object] = field(default_factory=dict)  # per float output: checking.evidence.Evidence
    intermediates_scope: Optional[str] = None  # "all", or "boundaries" (the rest were swept only on a failure)

    @property
    def passed(self) -> bool:
        return (not self.problems and all(output.passed for output in self.outputs)
                and all(tensor.passed for tensor in self.intermediates))

    @property
    def failed_outputs(self) -> List[str]:
        return [output.name for output in self.outputs if not output.passed]

    @property
    def failed_intermediates(self) -> List[str]:
        return [tensor.name for tensor in self.intermediates if not tensor.passed]

    def merged(self, other: "VerifyResult") -> "VerifyResult":
        """Combine the results of two runs of the same pair of models."""
        return replace(
            self,
            outputs=_merge_lists(self.outputs, other.outputs),
            intermediates=_merge_lists(self.intermediates, other.intermediates),
            runs=self.runs + other.runs,
            problems=self.problems + [p for p in other.problems if p not in self.problems],
        )

    def summary(self) -> str:
        """A table of every output, the failing intermediates, the notes they need, and a final line starting
        PASSED or FAILED."""
        header = f"reference: {self.reference_label}\ncandidate: {self.candidate_label}"
        details = [f"{self.runs} run{'s' if self.runs != 1 else ''}"]
        if self.seed is not None:
            details.append(f"seed {self.seed}")
        if self.ort_opt_level is not None:
            details.append(f"ORT optimization level: {self.ort_opt_level}")
        lines = [header + f"\n({', '.join(details)})"]
        if self.input_shapes:
            lines.append("input shapes: " + ", ".join(f"{name} {shape_text(shape)}"
                                                     for name, shape in self.input_shapes.items()))
        lines += [f"  {note}" for note in self.shape_notes]
        if self.evidence:
            lines.append("evidence: " + "; ".join(item.describe() for item in self.evidence.values()))
        for item in self.evidence.values():
            if not item.signal:
                lines.append(f"  {item.name} carries no signal at these shapes (its values vary less than "
                             f"{SIGNAL_FACTOR:g}x its tolerance of {item.allowance:.2g}): it is no evidence either way; "
                             "give real data (--inputs) or sizes (--input-shape) where it varies")
        for name, values in self.branch_inputs.items():
            lines.append(f"  {name} feeds an If: ran with {' and '.join(str(v) for v in values)}")
        lines.append("")
        if self.outputs:
            lines.append(_table(self.outputs, "output"))
        failing = [tensor for tensor in self.intermediates if not tensor.passed]
        if self.intermediates_checked:
            scope = " (fold boundaries spread over the graph; the rest only to localize a failure)" \
                if self.intermediates_scope == "boundaries" else ""
            lines.append(f"intermediate tensors compared: {len(self.intermediates)}{scope}, outside tolerance: "
                         f"{len(failing)}")
        if failing:
            lines.append(_table(failing, "intermediate"))
        notes = [f"{self.candidate_label}: {problem}" for problem in self.problems]
        for output in [*self.outputs, *failing]:
            notes.extend(_output_notes(output, self.candidate_label))
        if self.first_divergence is not None:
            source = f", produced by the fold of BN {self.divergence_source}" if self.divergence_source else ""
            notes.append(f"first diverging tensor (graph order): {self.first_divergence!r}{source}")
        if notes:
            lines += [""] + [f"  {note}" for note in notes]
        lines.append("")
        if self.passed:
            inside = f" and {len(self.intermediates)} intermediates" if self.intermediates else ""
            weak = "" if not self.evidence or any(item.signal for item in self.evidence.values()) else \
                "; no output carried signal, so this proves little"
            lines.append(f"PASSED: {len(self.outputs)} output{'s' if len(self.outputs) != 1 else ''}{inside} "
                         f"within tolerance{weak}")
        else:
            failed = self.failed_outputs
            if failed:
                lines.append(f"FAILED: {len(failed)} of {len(self.outputs)} outputs differ ({', '.join(failed)})")
            elif failing:
                lines.append(f"FAILED: {len(failing)} intermediate tensor(s) differ, first {self.first_divergence!r}")
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
            "input_shapes": {name: list(shape) for name, shape in self.input_shapes.items()},
            "shape_notes": list(self.shape_notes),
            "branch_inputs": {name: list(values) for name, values in self.branch_inputs.items()},
            "problems": list(self.problems),
            "failed_outputs": self.failed_outputs,
            "outputs": [output.to_dict() for output in self.outputs],
            "evidence": {name: item.to_dict() for name, item in self.evidence.items()},
            "intermediates_checked": self.intermediates_checked,
            "intermediates_scope": self.intermediates_scope,
            "intermediates_compared": len(self.intermediates),
            "failed_intermediates": [tensor.to_dict() for tensor in self.intermediates if not tensor.passed],
            "first_divergence": self.first_divergence,
            "divergence_source": self.divergence_source,
        }


def _merge_lists(first: List[OutputComparison], second: List[OutputComparison]) -> List[OutputComparison]:
    others = {item.name: item for item in second}
    return [item.merged(others[item.name]) if item.name in others else item for item in first]


def json_number(value):
    if isinstance(value, float) and not np.isfinite(value):
        return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _format_number(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.2e}"


def _table(outputs: Sequence[OutputComparison], first_column: str) -> str:
    columns = [first_column, "shape", "dtype", "max abs", "max rel", "mean abs", "cosine", "outside tol",
               "channels out", "atol", "rtol", "min atol", "min rtol", "result"]
    rows = []
    for output in outputs:
        shape = shape_text(output.shape) if output.shape is not None else "-"
        cosine = "-" if output.cosine_similarity is None else f"{output.cosine_similarity:.8f}"
        outside = "-" if output.problem else f"{output.mismatched}/{output.elements}"
        channels = f"{output.channels_outside}/{output.shape[1]}" if output.per_channel and output.shape else "-"
        rows.append([
            output.name, shape, output.dtype or "-",
            _format_number(output.max_abs_error), _format_number(output.max_rel_error),
            _format_number(output.mean_abs_error), cosine, outside, channels,
            _format_number(output.atol), _format_number(output.rtol),
            _format_number(output.min_atol), _format_number(output.min_rtol),
            "ok" if output.passed else "FAIL",
        ])
    return "\n".join(format_table(columns, rows))


def _output_notes(output: OutputComparison, candidate_label: str) -> List[str]:
    notes = []
    if output.tolerance_dtype:
        notes.append(f"{output.name}: judged at the {output.tolerance_dtype} tolerance, the precision that flows "
                     "into it")
    if output.noise_floor is not None:
        notes.append(f"{output.name}: the original's own rounding moves it by up to {output.noise_floor:.3g} from "
                     f"its exact (float64) value; {NOISE_MULTIPLE:g}x that is allowed beyond the dtype's tolerance")
    if output.problem:
        notes.append(f"{output.name}: {output.problem}")
    if output.reference_nan or output.reference_inf:
        notes.append(
            f"{output.name}: reference has {output.reference_nan} NaN and {output.reference_inf} inf values "
            f"(candidate: {output.candidate_nan} NaN, {output.candidate_inf} inf); "
            "matching NaN/inf positions count as equal"
        )
    if output.channels_outside:
        notes.append(
            f"{output.name}: {output.channels_outside} channel(s) have a mean error beyond their own scale "
            f"(worst {output.channel_error_ratio:.3g}x its tolerance): a whole channel moved, as a wrong fold moves it"
        )
    if output.nonfinite_mismatched:
        notes.append(
            f"{output.name}: {output.nonfinite_mismatched} element(s) are NaN/inf on one side only "
            f"or differ in NaN/inf ({candidate_label} vs reference)"
        )
    return notes
