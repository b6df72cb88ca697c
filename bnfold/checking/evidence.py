"""Whether a reference output can show a wrong fold at all: an output with no signal proves nothing.

At a size a model was not made for, a detector's sigmoid map can be ~1e-8 everywhere, and any candidate within
1e-4 of it passes, a wrong one included. An output has signal when the spread of its finite values exceeds
SIGNAL_FACTOR (bnfold.tolerances) times the allowance of its largest element; one without it (near-constant, saturated, all below the
tolerance) is reported as no evidence, and the check tries larger sizes where it chooses them (checking.feeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import numpy as np

from ..tolerances import SIGNAL_FACTOR
from .compare import is_tensor
from .tolerance import is_default, is_float, output_peak, resolve_tolerance, tolerance_dtype


@dataclass
class Evidence:
    """The range of one float output of the reference at the shapes used, and whether it carries signal."""

    name: str
    low: float
    high: float
    allowance: float
    signal: bool

    def describe(self) -> str:
        return f"{self.name} spans {self.low:.3g} .. {self.high:.3g}"

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "allowance": self.allowance, "signal": self.signal}


def output_evidence(values: Mapping[str, object], atol, rtol, flowing: Optional[Mapping[str, np.dtype]] = None
                    ) -> Dict[str, Evidence]:
    """Evidence of each float tensor output, with the allowance its comparison would use (see checking.compare)."""
    evidence = {}
    for name, value in values.items():
        if not is_tensor(value):
            continue
        array = np.asarray(value)
        if not is_float(array.dtype) or np.issubdtype(array.dtype, np.complexfloating) or not array.size:
            continue
        finite = array[np.isfinite(array)].astype(np.float64)
        if not finite.size:
            continue
        dtype = tolerance_dtype(array.dtype, (flowing or {}).get(name))
        peak = output_peak(array)
        element_atol = resolve_tolerance(atol, name, dtype, 0)
        if is_default(atol, name):
            element_atol *= peak
        allowance = element_atol + resolve_tolerance(rtol, name, dtype, 1) * peak
        low, high = float(finite.min()), float(finite.max())
        evidence[name] = Evidence(name, low, high, allowance, high - low > SIGNAL_FACTOR * allowance)
    return evidence


def lacking(evidence: Mapping[str, Evidence]) -> int:
    """How many outputs carry no signal."""
    return sum(not item.signal for item in evidence.values())
