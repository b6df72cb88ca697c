"""Running the models of a check in ONNX Runtime (CPU), optionally exposing intermediate tensors as outputs."""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

import numpy as np

from ..errors import InvalidModelError
from .intermediates import remove_outputs, with_outputs


def run_model(model, feeds: Mapping[str, np.ndarray], *, ort_opt_level: str = "disable") -> Dict[str, np.ndarray]:
    """Run a ModelProto or model path once on CPU in ONNX Runtime; outputs by name."""
    from ..runtime import make_session, run

    return run(make_session(model, opt_level=ort_opt_level, arena=False), dict(feeds))


class Runner:
    """One session for one model of the pair. `source` is what ORT loads when nothing is added (a path keeps
    models over 2 GiB loadable); with `extra` (name -> ONNX element type) the ModelProto gets those tensors as
    outputs for the time it takes to build the session, and is restored after. Graph inputs and outputs declared
    with a dim of 0 or below (exporters' "any size") are made open for that time too: ONNX Runtime would demand
    exactly that size. `shared`: the weights the sessions of one check share (runtime.SharedWeights)."""

    def __init__(self, model, source, label: str, *, opt_level: str = "disable",
                 extra: Optional[Mapping[str, int]] = None, shared=None):
        from ..runtime import make_session

        self.label = label
        self.shared = shared  # its session uses these weights in place: they live as long as it does
        try:
            if extra or _declares_unsized(model):
                added = with_outputs(model, extra or {})
                restore = _open_unsized(model)
                try:
                    self.session = make_session(model, opt_level=opt_level, arena=False, shared=shared)
                finally:
                    restore()
                    remove_outputs(model, added)
            else:
                self.session = make_session(source if isinstance(source, (str, os.PathLike)) else model,
                                            opt_level=opt_level, arena=False, shared=shared)
        except InvalidModelError as error:
            raise InvalidModelError(f"{label}: {error}") from None

    def run(self, feeds: Mapping[str, np.ndarray], quiet: bool = False) -> Dict[str, np.ndarray]:
        """Outputs by name (the extra ones included); the model's label is in the error when ORT fails.
        quiet: a failure is not logged by ORT (a trial the caller expects may fail)."""
        from ..runtime import run

        try:
            return run(self.session, dict(feeds), quiet=quiet)
        except InvalidModelError as error:
            raise InvalidModelError(f"{self.label}: {error}") from None


def _unsized_dims(model):
    """The dims of graph inputs and outputs declared with a size of 0 or below."""
    return [dim for value in (*model.graph.input, *model.graph.output) if value.type.HasField("tensor_type")
            for dim in value.type.tensor_type.shape.dim if dim.HasField("dim_value") and dim.dim_value <= 0]


def _declares_unsized(model) -> bool:
    return bool(_unsized_dims(model))


def _open_unsized(model):
    """Make every unsized dim (see _unsized_dims) open; return what puts the declared sizes back."""
    dims = _unsized_dims(model)
    sizes = [dim.dim_value for dim in dims]
    for dim in dims:
        dim.Clear()

    def restore():
        for dim, size in zip(dims, sizes):
            dim.dim_value = size

    return restore
