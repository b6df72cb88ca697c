"""The local check of single folds: each fold's replaced piece and its replacement, run alone on seeded probes.

A fold is proven where it happens, independently of the model's inputs. Each piece is first evaluated in float64
(checking.float64: both sides exact enough that the only difference a correct fold shows is its stored weights'
rounding, which is bounded element by element); a piece that path cannot evaluate or bound runs in ONNX Runtime
in its own dtype (checking.ort_pieces, batched into few sessions, tolerances by dtype). Probe shapes come from
what the piece needs, not from declared dims (checking.probes). A fault while checking one piece judges only that
piece: it is failed with the reason, and the others are checked as usual.

    checks = check_pieces(pieces, opset_imports=model.opset_import, ir_version=model.ir_version)
    rejected = [check for check in checks if check.failed]
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import onnx

from ..graph.pieces import Piece
from . import float64, ort_pieces
from .blas_threads import one_blas_thread
from .verdict import LocalCheck

__all__ = ["LocalCheck", "check_pieces"]


def check_pieces(
    pieces: Sequence[Piece],
    *,
    opset_imports: Sequence[onnx.OperatorSetIdProto],
    ir_version: int,
    seed: int = 0,
    exact: bool = True,
) -> List[LocalCheck]:
    """One LocalCheck per piece, in order. The pieces of one graph scope share its opset imports and IR version.
    exact=False skips the float64 path (every piece runs in ONNX Runtime, as benchmarks compare)."""
    opsets = {entry.domain: entry.version for entry in opset_imports}

    def confirm(piece: Piece, probes, side: str):
        return ort_pieces.run_side(piece, probes, side, opset_imports=opset_imports, ir_version=ir_version)

    checks: List[Optional[LocalCheck]] = [None] * len(pieces)
    scratch = float64.Scratch()
    left: Dict[int, str] = {}  # piece index -> why the float64 path left it to ONNX Runtime
    with one_blas_thread():
        for index, piece in enumerate(pieces):
            if not exact:
                left[index] = ""
                continue
            try:
                checks[index], left_why = float64.check_in_float64(piece, opsets, seed, index, confirm, scratch)
            except Exception as error:  # a bug here must not sink the other pieces, nor the fold run
                checks[index] = internal_error(piece, error)
                continue
            if checks[index] is None:
                left[index] = left_why
    if left:
        for index, check in zip(left, _run_in_ort([pieces[index] for index in left], opset_imports, ir_version,
                                                  seed)):
            if left[index]:
                check.notes.append(f"run in ONNX Runtime: {left[index]}")
            checks[index] = check
    return checks  # type: ignore[return-value]


def _run_in_ort(pieces: List[Piece], opset_imports, ir_version: int, seed: int) -> List[LocalCheck]:
    """ONNX Runtime's verdicts; if the batched run itself raises, each piece again on its own, so a fault judges
    only the piece it comes from."""
    try:
        return ort_pieces.run_in_ort(pieces, opset_imports=opset_imports, ir_version=ir_version, seed=seed)
    except Exception as error:
        if len(pieces) == 1:
            return [internal_error(pieces[0], error)]
    return [check for piece in pieces for check in _run_in_ort([piece], opset_imports, ir_version, seed)]


def internal_error(piece: Piece, error: Exception) -> LocalCheck:
    """A failed verdict for a piece whose check raised: the fold is not applied, and the reason says why."""
    message = f"{type(error).__name__}: {error}".splitlines()[0]
    return LocalCheck(piece.label, passed=False,
                      error=f"internal error in the local check: {message} (please report it)")
