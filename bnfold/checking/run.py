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
    outputs for the time it takes to build the session, and is restored after."""

    def __init__(self, model, source, label: str, *, opt_level: str = "disable",
                 extra: Optional[Mapping[str, int]] = None):
        from ..runtime import make_session

        self.label = label
        try:
            if extra:
                added = with_outputs(model, extra)
                try:
                    self.session = make_session(model, opt_level=opt_level, arena=False)
                finally:
                    remove_outputs(model, added)
            else:
                self.session = make_session(source if isinstance(source, (str, os.PathLike)) else model,
                                            opt_level=opt_level, arena=False)
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
