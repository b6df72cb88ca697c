"""Typed errors: each carries the exit code the CLI returns and a message a user can act on.

Exit codes (documented in the README and `bnfold --help`):
  0  success (BNs that had to stay are listed, not an error)
  1  a numerical equivalence check failed
  2  bad usage, or an input that cannot be read or is not a valid model, or an output that cannot be written
  3  internal error (a bug in bnfold: please report it)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class BnfoldError(Exception):
    """Base of every error bnfold raises on purpose; str(error) is one line for the user."""

    exit_code = EXIT_USAGE


class UsageError(BnfoldError):
    """An option value or argument combination that cannot work (bad shape spec, missing -o, ...)."""


class ArgumentTypeError(UsageError, TypeError):
    """A Python API argument of the wrong type; `.parameter` names it. Also a TypeError, as Python code expects."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class UnresolvedShapeError(UsageError):
    """A dynamic input dim has no size the check could find (none given, none that lets the model run)."""


class InputFileError(BnfoldError):
    """The input path is missing, a directory, or unreadable."""


class ModelLoadError(BnfoldError):
    """The file exists but is not a (complete) ONNX model."""


class InvalidModelError(BnfoldError):
    """The model parses but fails onnx.checker or has a structure bnfold cannot work on."""


class ExternalDataError(BnfoldError):
    """External tensor data is missing, truncated, or points outside the model's directory."""


class OutputError(BnfoldError):
    """The output cannot be written (missing or read-only directory, disk full, would overwrite the input)."""


class MissingDependencyError(BnfoldError):
    """An optional dependency (torch, matplotlib, onnxruntime-gpu, ...) is not installed."""


class ExportError(BnfoldError):
    """Exporting a PyTorch module to ONNX failed."""


class ProviderError(BnfoldError):
    """A requested ONNX Runtime execution provider is unavailable or fell back to another."""


class VerificationFailed(BnfoldError):
    """Two models were compared and differ beyond tolerance; `.result` holds the comparison."""

    exit_code = EXIT_VERIFY_FAILED

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
