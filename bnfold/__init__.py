"""bnfold: fold eval-mode BatchNormalization into neighbouring weights of ONNX models, verify, benchmark, export.

    folded, report = bnfold.fold(onnx.load("model.onnx"))
    report = bnfold.fold_file("model.onnx", "folded.onnx")
    result = bnfold.verify("model.onnx", "folded.onnx")

Public names are imported on first use, so `import bnfold` stays cheap and never imports torch or onnxruntime.
Modules are named apart from the functions they hold (bnfold.folding holds fold): importing a submodule sets an
attribute of the package, and a module named `fold` would replace the function bnfold.fold.
"""

from __future__ import annotations

import importlib

from .errors import (
    ArgumentTypeError,
    BnfoldError,
    ExportError,
    ExternalDataError,
    InputFileError,
    InvalidModelError,
    MissingDependencyError,
    ModelLoadError,
    OutputError,
    ProviderError,
    UnresolvedShapeError,
    UsageError,
    VerificationFailed,
)

__version__ = "0.1.0"

_LAZY = {
    "fold": ".folding",
    "fold_file": ".folding",
    "FoldOptions": ".options",
    "FoldReport": ".report",
    "BnDecision": ".report",
    "verify": ".checking.end_to_end",
    "VerifyResult": ".checking.result",
    "bench": ".benchmark",
    "BenchResult": ".benchmark",
    "export": ".exporting",
    "load_model": ".loading",
    "save_model": ".saving",
    "testing": ".testing",
    "fold_files": ".batch",
    "BatchResult": ".batch",
    "ModelResult": ".batch",
    "check": ".lint",
    "ModelCheck": ".lint",
}

__all__ = sorted(
    [*_LAZY, "ArgumentTypeError", "BnfoldError", "ExportError", "ExternalDataError", "InputFileError",
     "InvalidModelError", "MissingDependencyError", "ModelLoadError", "OutputError", "ProviderError",
     "UnresolvedShapeError", "UsageError", "VerificationFailed"]
)


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
    module = importlib.import_module(module_name, __name__)
    value = module if name == "testing" else getattr(module, name)
    globals()[name] = value
    return value
