"""Default verification tolerances by output dtype: a table of its own, so `bnfold verify --help` shows it without
importing numpy."""

from __future__ import annotations

from typing import Dict, Tuple

# (atol, rtol) by output dtype, chosen from Conv+BN folds run in ONNX Runtime CPU with optimizations disabled.
# float32: a correct fold of a 50-block residual net needs atol <= 6e-7 at rtol 1e-4 (a 16-layer plain chain: 3e-5),
# and a correct fold of a 12-layer chain whose activations grow to ~1e6 stays within 1e-5 of each channel's peak,
# while one folded weight off by 1e-3 moves the features by ~3e-3. float16: correct folds of shallow plain and
# 50-block residual nets need up to 4e-3 at rtol 1e-2 (1 ulp at magnitude 8 is 8e-3); fp16 noise grows with depth
# (a 16-layer plain chain needs 4e-2), so deep fp16 models may need --atol. float64: a correct fold is within
# 3e-10, a fold computed in float32 is off by ~6e-7. Integers and booleans (argmax, masks) must match exactly.
DEFAULT_TOLERANCES: Dict[str, Tuple[float, float]] = {
    "float64": (1e-8, 1e-8),
    "float32": (1e-4, 1e-4),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
    "exact": (0.0, 0.0),
}

# The end-to-end check's two allowances beyond the table (bnfold.checking.evidence, bnfold.checking.noise):
# an output carries signal when its values spread over more than SIGNAL_FACTOR times its allowance, and a tensor
# outside its default tolerance may also differ by NOISE_MULTIPLE times the original's own distance from its exact
# (float64) evaluation: a correct fold and the original are each about that far from it, so the fold may differ from
# the original by twice it, and this leaves 2x more for the variation between channels and runs (on
# models/check_fixtures a correct fold's difference is at most 0.1x the original's own distance).
SIGNAL_FACTOR = 10.0
NOISE_MULTIPLE = 4.0
