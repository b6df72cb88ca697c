"""What one fold replaced, as data: the local check runs `before` and `after` on their own and compares them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx

Dims = Tuple[Optional[int], ...]  # None where the size is not known


@dataclass
class PieceInput:
    """A run-time tensor the piece reads: its name, element type and dims as far as the model says."""

    name: str
    dtype: np.dtype
    dims: Dims


@dataclass
class Piece:
    """A self-contained part of one graph before and after a single fold.

    `before` are copies of the nodes the fold replaced, `after` copies of the nodes that replaced them; both read
    `inputs` (run-time data) and constants (`constants_before` / `constants_after`, by tensor name), and both
    compute every tensor in `outputs`. Output tensors carry their channels on axis `channel_axes[name]` (None: no
    channel axis), so the check can compare each channel against its own magnitude.
    """

    label: str  # the fold this piece checks, as the report names it
    inputs: List[PieceInput]
    outputs: List[str]
    before: List[onnx.NodeProto]
    after: List[onnx.NodeProto]
    constants_before: Dict[str, np.ndarray] = field(default_factory=dict)
    constants_after: Dict[str, np.ndarray] = field(default_factory=dict)
    channel_axes: Dict[str, Optional[int]] = field(default_factory=dict)
