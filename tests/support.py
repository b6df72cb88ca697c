"""Helpers for tests: run models in ONNX Runtime with optimizations disabled and compare original vs folded."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import onnx
import onnxruntime as ort

import bnfold
from bnfold.inputs import make_inputs


def run(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Outputs by name, ORT_DISABLE_ALL: ORT would otherwise fuse Conv+BN itself and hide a wrong fold."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def tolerance(dtype) -> float:
    return {np.dtype(np.float16): 2e-2, np.dtype(np.float64): 1e-9}.get(np.dtype(dtype), 2e-5)


def assert_same_outputs(original: onnx.ModelProto, folded: onnx.ModelProto, *, batch: int = 2, seed: int = 0,
                        rtol: Optional[float] = None) -> None:
    feeds = _feeds(original, batch, seed)
    expected, actual = run(original, feeds), run(folded, feeds)
    assert list(expected) == list(actual)
    for name, reference in expected.items():
        scale = max(1.0, float(np.max(np.abs(reference.astype(np.float64)))) if reference.size else 1.0)
        tol = rtol if rtol is not None else tolerance(reference.dtype)
        np.testing.assert_allclose(actual[name].astype(np.float64), reference.astype(np.float64),
                                   rtol=tol, atol=tol * scale, err_msg=f"output {name!r}")


def _feeds(model: onnx.ModelProto, batch: int, seed: int) -> Dict[str, np.ndarray]:
    from bnfold.inputs import graph_inputs

    shapes = {spec.name: tuple(batch if not isinstance(d, int) else d for d in spec.dims)
              for spec in graph_inputs(model)}
    return make_inputs(model, shapes=shapes, seed=seed)


def fold_and_compare(model: onnx.ModelProto, *, expect_folded: Optional[int] = None, check: bool = True, **kwargs):
    """Fold, check the result with onnx.checker (full), compare outputs in ORT; return (folded, report)."""
    folded, report = bnfold.fold(model, **kwargs)
    if check:
        onnx.checker.check_model(folded, full_check=True)
    assert_same_outputs(model, folded)
    if expect_folded is not None:
        folded_count = report.folded_count + sum(d.folded for d in report.decomposed)
        assert folded_count == expect_folded, report.render(verbose=True)
    return folded, report


def op_types(model: onnx.ModelProto) -> list:
    return [node.op_type for node in model.graph.node]
