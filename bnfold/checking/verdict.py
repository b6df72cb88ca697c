"""The verdict of the local check on one piece, as the fold engine and the report read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

Shape = Tuple[int, ...]


@dataclass
class LocalCheck:
    """The verdict on one piece.

    passed: both sides ran and every compared output is within tolerance. skipped: why the piece was not judged
    (ONNX Runtime cannot run the before side, or every output of the before side was NaN/inf); a skipped piece
    has passed False and is no evidence against the fold. `failed` is the verdict that rejects a fold.
    max_error: the worst per-channel relative error (max |after - before| over a channel / that channel's
    max |before|), on `output`, channel `channel` (None: the output has no channel axis); inf when the after side
    gave NaN/inf or a different shape; None when nothing was compared. tolerance: the bound for that output's dtype
    (ORT path), or the relative error at which that channel reaches its rounding bound (float64 path: passed iff
    max_error <= tolerance, i.e. `bound_ratio` <= 1). method: "float64" or "ORT <dtype>".
    bound_ratio (float64 path): the worst |after - before| over the bound a correct fold's rounding of the stored
    weights allows, element by element.
    """

    label: str
    passed: bool
    max_error: Optional[float] = None
    tolerance: Optional[float] = None
    output: Optional[str] = None
    channel: Optional[int] = None
    skipped: Optional[str] = None
    error: Optional[str] = None  # why the after side is wrong beyond numbers: it did not run, a shape differs
    shapes: Dict[str, Shape] = field(default_factory=dict)  # the input shapes used
    notes: List[str] = field(default_factory=list)  # outputs left out (NaN/inf on the before side)
    method: str = ""
    bound_ratio: Optional[float] = None

    @property
    def failed(self) -> bool:
        return not self.passed and self.skipped is None

    @property
    def reason(self) -> str:
        """One line for the report: why the fold is rejected, skipped, or how close it is."""
        if self.skipped is not None:
            return f"local check skipped: {self.skipped}"
        if self.error is not None:
            return f"local check failed: {self.error}"
        where = f" on {self.output}" + (f" channel {self.channel}" if self.channel is not None else "")
        verdict = "passed" if self.passed else "failed"
        relation = "<=" if self.passed else ">"
        how = [self.method] if self.method else []
        if self.bound_ratio is not None:
            how.append(f"{self.bound_ratio:.2g}x the stored weights' rounding bound")
        how_text = f" ({', '.join(how)})" if how else ""
        return (f"local check {verdict}: max rel error {self.max_error:.3g} {relation} {self.tolerance:.3g}{where}"
                f"{how_text}")
