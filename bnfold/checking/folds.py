"""The local check as the fold engine uses it: pieces collected while folding, checked a chunk at a time (so the
constants they hold stay bounded), each verdict written into its fold's decision."""

from __future__ import annotations

import importlib.util
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx

from ..graph.pieces import Piece

CHUNK_BYTES = 64 << 20  # check once the pending pieces hold this many bytes of constants


class LocalChecker:
    def __init__(self, model: onnx.ModelProto):
        self.opset_imports = list(model.opset_import)
        self.ir_version = model.ir_version
        self.pending: List[Tuple[Piece, object, tuple]] = []
        self.pending_bytes = 0
        self.failures: Dict[tuple, str] = {}
        self.checked = self.skipped = 0
        self.methods: Dict[str, int] = {}  # checked folds by how: "float64", "ORT float32", ...
        self.worst: Optional[float] = None
        self.available = _onnxruntime_available()

    def add(self, piece: Piece, decision, key: tuple) -> None:
        if not self.available:
            return
        if any(attr.ref_attr_name for node in piece.before for attr in node.attribute):
            self.skipped += 1
            decision.local_check = ("local check skipped: a node of the piece takes an attribute from its function's "
                                    "call site")
            return
        self.pending.append((piece, decision, key))
        self.pending_bytes += sum(_nbytes(value) for side in (piece.constants_before, piece.constants_after)
                                  for value in side.values())
        if self.pending_bytes >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        from .local import check_pieces, internal_error

        pieces = [piece for piece, _, _ in self.pending]
        try:
            checks = check_pieces(pieces, opset_imports=self.opset_imports, ir_version=self.ir_version)
        except Exception:  # check_pieces contains faults per piece; this is the last guard: one piece at a time
            checks = []
            for piece in pieces:
                try:
                    checks += check_pieces([piece], opset_imports=self.opset_imports, ir_version=self.ir_version)
                except Exception as error:
                    checks.append(internal_error(piece, error))
        for (piece, decision, key), check in zip(self.pending, checks):
            if check.skipped is not None:
                self.skipped += 1
                decision.local_check = check.reason
                continue
            self.checked += 1
            self.methods[check.method or "unknown"] = self.methods.get(check.method or "unknown", 0) + 1
            decision.local_error = check.max_error
            if check.max_error is not None and np.isfinite(check.max_error):
                self.worst = max(self.worst or 0.0, check.max_error)
            if check.failed:
                bug = "" if "please report" in check.reason else " (a bnfold bug: please report it)"
                self.failures[key] = f"{check.reason}; the fold was not applied{bug}"
        self.pending, self.pending_bytes = [], 0

    def summary(self) -> dict:
        """What the check covered, for the report."""
        if not self.available:
            return {"ran": False, "why": "onnxruntime is not installed"}
        return {"ran": True, "checked": self.checked, "skipped": self.skipped, "failed": len(self.failures),
                "worst_error": self.worst, "methods": dict(self.methods)}


def _nbytes(value) -> int:
    return int(getattr(value, "nbytes", 0))


def _onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None
