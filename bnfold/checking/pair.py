"""The two models of one end-to-end check, run side by side on the same feeds and compared tensor by tensor.

Intermediate tensors are exposed as outputs at most CHUNK_BYTES of them per run of each model, and compared as each
pair of runs ends, so the check holds two chunks beside ONNX Runtime whatever the model's size. A tensor outside its
default tolerance is judged again, allowing for the reference's own rounding noise (checking.noise), before it fails.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .compare import compare_intermediates, compare_outputs
from .result import VerifyResult
from .tolerance import is_default

# Bytes of intermediate tensors one run of each model exposes at most: the check's memory beyond ONNX Runtime's
# own stays about twice this, whatever the model's size.
CHUNK_BYTES = 32 << 20


class ModelPair:
    """The two models of one check, the feeds they run on, and how tensors are compared: at most CHUNK_BYTES of
    exposed intermediates per run of each model, and each failure judged again against the reference's noise."""

    def __init__(self, reference, reference_source, reference_label, candidate, candidate_source, candidate_label,
                 opt_level, atol, rtol, output_names, flowing, elem_types):
        self.models = {"reference": (reference, reference_source, reference_label),
                       "candidate": (candidate, candidate_source, candidate_label)}
        self.opt_level, self.atol, self.rtol = opt_level, atol, rtol
        self.output_names, self.flowing, self.elem_types = output_names, flowing, elem_types
        self.feed_sets: List[Dict[str, np.ndarray]] = []
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.first_outputs: Dict[str, object] = {}  # the reference's outputs on the first feed set
        self.shared = None  # the weights every session of the check shares, made with the first

    def runner(self, which: str, extra: Sequence[str] = (), opt_level: Optional[str] = None):
        from ..runtime import SharedWeights
        from .run import Runner

        if self.shared is None:
            self.shared = SharedWeights()
        model, source, label = self.models[which]
        if opt_level is not None and opt_level != self.opt_level:
            label = f"{label} (ORT level {opt_level})"
        return Runner(model, source, label, opt_level=opt_level or self.opt_level,
                      extra={name: self.elem_types[name] for name in extra}, shared=self.shared)

    def compare(self, names: Sequence[str], with_outputs: bool = False) -> VerifyResult:
        """Compare `names` (and the outputs) over every feed set; failures under default tolerances are judged
        again against the reference's own rounding noise."""
        from .intermediates import chunks_by_bytes, tensor_sizes

        sizes = tensor_sizes(self.models["reference"][0], names, self.shapes)
        chunks = chunks_by_bytes(names, sizes, CHUNK_BYTES)
        result = None
        for index, chunk in enumerate(chunks or [[]]):
            part = self._run_and_compare(chunk, with_outputs and index == 0)
            result = part if result is None else _joined(result, part)
        failing = [item.name for item in [*result.outputs, *result.intermediates]
                   if not item.passed and item.problem is None and is_default(self.atol, item.name)]
        if failing:
            self._judge_against_noise(result, failing)
        return result

    def _run_and_compare(self, chunk: Sequence[str], with_outputs: bool, exact: bool = False) -> VerifyResult:
        from .noise import exact_values

        labels = (self.models["reference"][2], self.models["candidate"][2])
        runners = [self.runner("reference", chunk), self.runner("candidate", chunk)]
        outputs = self.output_names if with_outputs else []
        result = None
        for feeds in self.feed_sets:
            values = [runner.run(feeds) for runner in runners]
            reference_outputs = {name: values[0][name] for name in outputs if name in values[0]}
            if with_outputs and not self.first_outputs:
                self.first_outputs = reference_outputs
            candidate_outputs = {} if not with_outputs else \
                {name: value for name, value in values[1].items() if name not in chunk or name in outputs}
            exact_ones = exact_values(self.models["reference"][0], feeds, [*outputs, *chunk]) if exact else None
            part = compare_outputs(reference_outputs, candidate_outputs, atol=self.atol, rtol=self.rtol,
                                   reference_label=labels[0], candidate_label=labels[1], flowing=self.flowing,
                                   exact=exact_ones)
            part.intermediates = compare_intermediates(list(chunk), values[0], values[1], atol=self.atol,
                                                       rtol=self.rtol, flowing=self.flowing, exact=exact_ones)
            result = part if result is None else result.merged(part)
            del values, exact_ones
        return result

    def _judge_against_noise(self, result: VerifyResult, failing: Sequence[str]) -> None:
        """Compare the failing tensors again, allowing for the reference's own distance from its exact (float64)
        evaluation (see checking.noise), and keep the new verdicts. Where it cannot be evaluated, they stand."""
        outputs = [name for name in failing if name in self.output_names]
        inside = [name for name in failing if name not in self.output_names]
        again = self._run_and_compare(inside, with_outputs=bool(outputs), exact=True)
        judged = {item.name: item for item in [*again.outputs, *again.intermediates] if item.name in failing}
        result.outputs = [judged.get(item.name, item) for item in result.outputs]
        result.intermediates = [judged.get(item.name, item) for item in result.intermediates]


def _joined(first: VerifyResult, second: VerifyResult) -> VerifyResult:
    first.outputs += second.outputs
    first.intermediates += second.intermediates
    first.problems += [problem for problem in second.problems if problem not in first.problems]
    return first
