"""ONNX Runtime sessions, shared by verify, bench and export. onnxruntime is imported only when a session is made."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple, Union

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


# Initializers at least this large reach ONNX Runtime as arrays beside a weightless model, not serialized into it.
HANDED_OVER_BYTES = 1 << 16
_HANDED_OVER_DTYPES = {"float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}


class SharedWeights:
    """Weights held as file ranges, made into OrtValues once and given to every session of one check (a view mapped
    from the file where aligned, else one copy), which ORT uses in place with prepacking off: the two models'
    unchanged weights are one copy in memory instead of one per session, and no session reads them itself
    (VGG-11-BN's two check sessions: 0.3 s and 647 MiB against 1.7 s and 1334 MiB)."""

    def __init__(self):
        self._values: Dict[tuple, tuple] = {}

    def value_for(self, tensor, ort):
        """The OrtValue for a tensor held as a file range; None for any other."""
        from .tensor_store import store_of

        store = store_of(tensor)
        place = None if store is None else store.place(tensor)
        if place is None:
            return None
        key = (*place, tensor.data_type, tuple(tensor.dims))
        if key not in self._values:
            array = store.mapped(tensor)
            array = store.value(tensor) if array is None else array
            self._values[key] = (array, ort.OrtValue.ortvalue_from_numpy(array))
        return self._values[key][1]


def _weightless(model, options, ort, shared: Optional[SharedWeights] = None):
    """For an in-memory ModelProto: the model serialized without its large main-graph initializers, so that ONNX
    Runtime does not parse a serialized copy of the weights. A tensor held as a range of its source file (see
    bnfold.tensor_store) becomes external data in that file, which ORT reads itself (ORT >= 1.21, which can be told the
    folder of a model given as bytes); the others go to ORT as OrtValues (SessionOptions.add_external_initializers),
    which ORT copies while the session is made. With `shared`, the tensors in the file go to ORT as its OrtValues
    instead, used in place. Returns (bytes, the arrays to keep until then), or None when nothing is large."""
    import onnx

    from .tensor_store import in_proto, is_external, is_held, value as tensor_value

    graph_inputs = {value.name for value in model.graph.input}
    large = [tensor for tensor in model.graph.initializer
             if (is_held(tensor) or len(tensor.raw_data) >= HANDED_OVER_BYTES) and tensor.name not in graph_inputs
             and not is_external(tensor)]
    large = [tensor for tensor in large
             if onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name in _HANDED_OVER_DTYPES]
    if not large and not any(is_held(tensor) for tensor in model.graph.initializer):
        return None
    folder, in_file = _in_files(large, ort)
    handed = {id(tensor) for tensor in large}
    copy = onnx.ModelProto()
    _copy_fields(model, copy, skip="graph")
    _copy_fields(model.graph, copy.graph, skip="initializer")
    names, arrays, in_place = [], [], False
    for tensor in model.graph.initializer:
        stub = copy.graph.initializer.add()
        if id(tensor) not in handed:
            stub.CopyFrom(in_proto(tensor))
            continue
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        where = in_file.get(id(tensor))
        # "bnfold-handed-over" is never read: ORT takes the OrtValue given for the name.
        for key, value in (where or (("location", "bnfold-handed-over"),)):
            entry = stub.external_data.add()
            entry.key, entry.value = key, value
        if where is None:
            names.append(tensor.name)
            arrays.append(tensor_value(tensor))
        elif shared is not None:
            in_file_value = shared.value_for(tensor, ort)
            if in_file_value is not None:
                options.add_initializer(tensor.name, in_file_value)
                in_place = True
    if in_file:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    if in_place:  # prepacking would make each session its own packed copy of the weights it shares
        options.add_session_config_entry("session.disable_prepacking", "1")
    if arrays:
        options.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays])
    return copy.SerializeToString(), arrays


# The first ONNX Runtime that takes the folder of external data for a model given as bytes.
_EXTERNAL_FOLDER_VERSION = (1, 21)


def _in_files(tensors, ort) -> Tuple[str, dict]:
    """(folder, {id(tensor): external-data entries}) for the tensors held as ranges of files in one folder (the
    folder holding most of their bytes), when this ONNX Runtime can read them there; else ("", {}): they go as
    arrays."""
    from .tensor_store import store_of

    try:
        version = tuple(int(part) for part in ort.__version__.split(".")[:2])
    except ValueError:
        return "", {}
    if version < _EXTERNAL_FOLDER_VERSION:
        return "", {}
    ranges = {}
    for tensor in tensors:
        store = store_of(tensor)
        where = None if store is None else store.file_range(tensor)
        if where is not None:
            ranges[id(tensor)] = where
    if not ranges:
        return "", {}
    sizes: Dict[str, int] = {}
    for path, _, length in ranges.values():
        sizes[os.path.dirname(path)] = sizes.get(os.path.dirname(path), 0) + length
    folder = max(sizes, key=sizes.get)
    return folder or ".", {key: (("location", os.path.basename(path)), ("offset", str(offset)),
                                 ("length", str(length)))
                           for key, (path, offset, length) in ranges.items() if os.path.dirname(path) == folder}


def _copy_fields(source, target, skip: str) -> None:
    """Copy every set field of a message but one, without copying that one."""
    from .loading import set_field

    for field, value in source.ListFields():
        if field.name != skip:
            set_field(target, field, value)


@contextlib.contextmanager
def _session_source(model, options=None, ort=None, shared: Optional[SharedWeights] = None):
    """What InferenceSession takes for `model`: a path, bytes (a weightless serialization when `options` can take
    the large initializers as arrays), or for a ModelProto past protobuf's 2 GiB limit a temporary file with
    external data (it cannot be serialized in one piece), kept until the session is made."""
    from .saving import save_model
    from .tensors import exceeds_protobuf_limit

    if isinstance(model, (str, os.PathLike)):
        yield os.fspath(model), None
    elif isinstance(model, bytes):
        yield model, None
    elif not exceeds_protobuf_limit(model):
        weightless = _weightless(model, options, ort, shared) if options is not None else None
        yield weightless if weightless is not None else (model.SerializeToString(), None)
    else:
        with tempfile.TemporaryDirectory(prefix="bnfold-") as directory:
            path = os.path.join(directory, "model.onnx")
            save_model(model, path, external_data=True)
            yield path, None


def make_session(
    model,
    *,
    opt_level: str = "disable",
    providers: Sequence[Union[str, tuple]] = ("cpu",),
    intra_op_threads: Optional[int] = None,
    allow_fallback: bool = False,
    log_severity: int = 3,
    arena: bool = True,
    shared: Optional[SharedWeights] = None,
):
    """An InferenceSession for a ModelProto, path or serialized bytes, at a named optimization level.

    arena: ORT's CPU memory arena, which keeps what a run allocated for the next one; sessions run once or twice
    (the checks) go without it and peak lower (ResNet-50's end-to-end check: 23 MiB less). shared: the weights the
    sessions of one check share (SharedWeights; their prepacking is off, as their runs are one or two).

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
    options.enable_cpu_mem_arena = arena
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
    with _session_source(model, options, ort, shared) as (source, kept_alive):
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=resolved)  # copies kept_alive
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
