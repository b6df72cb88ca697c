"""ONNX Runtime sessions, shared by verify, bench and export. onnxruntime is imported only when a session is made."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Union

if TYPE_CHECKING:
    import numpy as np

from .errors import InvalidModelError, MissingDependencyError, ProviderError, UsageError

# User-facing names of ORT's graph optimization levels. "disable" is the honest default for verification: ORT
# otherwise fuses Conv+BN itself, and a wrong fold would compare equal to a silently re-fused original.
OPT_LEVELS = ("disable", "basic", "extended", "all")

# Short provider names accepted on the command line; any other name is passed through to ORT as written.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


def provider_name(name: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider'; full ORT names pass through unchanged."""
    return PROVIDER_ALIASES.get(name.lower(), name)


@contextlib.contextmanager
def _session_source(model):
    """What InferenceSession takes for `model`: a path, bytes, or for a ModelProto past protobuf's 2 GiB limit a
    temporary file with external data (it cannot be serialized in one piece), kept until the session is made."""
    from .saving import save_model
    from .tensors import exceeds_protobuf_limit

    if isinstance(model, (str, os.PathLike)):
        yield os.fspath(model)
    elif isinstance(model, bytes):
        yield model
    elif not exceeds_protobuf_limit(model):
        yield model.SerializeToString()
    else:
        with tempfile.TemporaryDirectory(prefix="bnfold-") as directory:
            path = os.path.join(directory, "model.onnx")
            save_model(model, path, external_data=True)
            yield path


def make_session(
    model,
    *,
    opt_level: str = "disable",
    providers: Sequence[Union[str, tuple]] = ("cpu",),
    intra_op_threads: Optional[int] = None,
    allow_fallback: bool = False,
    log_severity: int = 3,
):
    """An InferenceSession for a ModelProto, path or serialized bytes, at a named optimization level.

    Providers may be short names ('cpu', 'cuda') or (name, options) pairs. Unless allow_fallback, a requested
    provider that ORT lacks, or that the session did not activate, raises ProviderError. log_severity: the least
    severe message ORT itself prints (3 errors, 4 fatal only: for callers that report failures themselves).
    """
    ort = import_onnxruntime()
    if opt_level not in OPT_LEVELS:
        raise UsageError(f"unknown ORT optimization level {opt_level!r}; choose one of {', '.join(OPT_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    options.log_severity_level = log_severity
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    resolved = [
        (provider_name(p[0]), p[1]) if isinstance(p, tuple) else provider_name(p) for p in providers
    ]
    names = [p[0] if isinstance(p, tuple) else p for p in resolved]
    available = ort.get_available_providers()
    missing = [name for name in names if name not in available]
    if missing and not allow_fallback:
        raise ProviderError(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
            f"(available: {', '.join(available)}); for CUDA: pip install onnxruntime-gpu"
        )
    resolved = [p for p, name in zip(resolved, names) if name in available] or ["CPUExecutionProvider"]
    with _session_source(model) as source:
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=resolved)
        except Exception as error:  # ORT raises its own exception types for unloadable models
            message = str(error).strip().splitlines()[0]
            raise InvalidModelError(f"ONNX Runtime cannot load the model: {message}") from None
    active = session.get_providers()
    inactive = [name for name in names if name in available and name not in active]
    if inactive and not allow_fallback:
        raise ProviderError(
            f"ONNX Runtime fell back from {', '.join(inactive)} to {', '.join(active)} "
            "(check the CUDA/cuDNN installation); pass allow_fallback to accept"
        )
    return session


def run(session, feeds: Dict[str, np.ndarray], quiet: bool = False) -> Dict[str, np.ndarray]:
    """Run a session and return its outputs by name; ORT's run failures become InvalidModelError.
    quiet: ORT does not log a failure to stderr (the caller handles it, as when trying input sizes)."""
    names = [output.name for output in session.get_outputs()]
    options = None
    if quiet:
        options = import_onnxruntime().RunOptions()
        options.log_severity_level = 4
    try:
        return dict(zip(names, session.run(names, feeds, options)))
    except Exception as error:  # ORT's exception types derive from Exception directly
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidModelError(f"ONNX Runtime failed to run the model: {message}") from None
