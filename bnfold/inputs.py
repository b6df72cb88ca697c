"""Model inputs for running a model: shape specs from the command line, user data files, seeded random data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputFileError, UsageError
from .options import as_paths, as_seed

Dim = Union[int, str, None]  # a fixed size, a symbolic name, or unknown
DEFAULT_BATCH = 1


@dataclass(frozen=True)
class InputSpec:
    """One graph input a caller has to feed: its name, numpy dtype, and declared dims."""

    name: str
    dtype: np.dtype
    dims: Tuple[Dim, ...]


def graph_inputs(model) -> list:
    """The inputs a caller must feed, in graph order: graph inputs that are not initializers."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            kind = value.type.WhichOneof("value") or "unknown"
            raise UsageError(f"input {value.name!r} is a {kind} input; bnfold can only feed tensor inputs")
        tensor_type = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        dims: Tuple[Dim, ...] = ()
        if tensor_type.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                for d in tensor_type.shape.dim
            )
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def parse_shape_spec(text: str) -> Tuple[Optional[str], Tuple[int, ...]]:
    """'input:8x3x224x224' -> ('input', (8, 3, 224, 224)); a bare '8x3x224x224' has no name (single-input models)."""
    name, _, dims_text = text.rpartition(":")
    try:
        dims = tuple(int(part) for part in dims_text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise UsageError(f"bad shape {text!r}: expected NAME:D0xD1x... such as input:1x3x224x224") from None
    if any(d < 0 for d in dims):
        raise UsageError(f"bad shape {text!r}: dimensions must be non-negative")
    return (name or None), dims


def parse_shape_specs(texts: Iterable[str]) -> Dict[Optional[str], Tuple[int, ...]]:
    return dict(parse_shape_spec(text) for text in texts)


def named_overrides(specs: Sequence[InputSpec], overrides: Optional[Mapping[Optional[str], Tuple[int, ...]]]
                    ) -> Dict[str, Tuple[int, ...]]:
    """--input-shape values by input name: an unnamed one names the single input; unknown names are refused."""
    overrides = dict(overrides or {})
    if None in overrides:
        if len(specs) != 1:
            names = ", ".join(spec.name for spec in specs)
            raise UsageError(f"a shape without an input name needs a single-input model; name one of: {names}")
        overrides[specs[0].name] = overrides.pop(None)
    unknown = set(overrides) - {spec.name for spec in specs}
    if unknown:
        names = ", ".join(spec.name for spec in specs)
        raise UsageError(f"--input-shape names unknown input(s) {sorted(unknown)}; the model's inputs are: {names}")
    return overrides


def resolve_shapes(
    specs: Sequence[InputSpec], overrides: Optional[Mapping[Optional[str], Tuple[int, ...]]] = None
) -> Dict[str, Tuple[int, ...]]:
    """A concrete shape per input: the user's override, else the declared dims with batch 1 for a free first dim."""
    overrides = named_overrides(specs, overrides)
    shapes = {}
    for spec in specs:
        if spec.name in overrides:
            shape = overrides[spec.name]
            if spec.dims and len(shape) != len(spec.dims):
                raise UsageError(
                    f"input {spec.name!r} has rank {len(spec.dims)}, but the given shape {shape} has rank {len(shape)}"
                )
            for axis, (given, declared) in enumerate(zip(shape, spec.dims)):
                if isinstance(declared, int) and declared != given:
                    raise UsageError(f"input {spec.name!r} dim {axis} is fixed at {declared}, but {given} was given")
            shapes[spec.name] = tuple(shape)
            continue
        shape = []
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, int):
                shape.append(dim)
            elif axis == 0:
                shape.append(DEFAULT_BATCH)
            else:
                label = f"{dim!r}" if dim else "unknown"
                raise UsageError(
                    f"input {spec.name!r} dim {axis} is dynamic ({label}); give its size with "
                    f"--input-shape {spec.name}:" + "x".join("N" for _ in spec.dims)
                )
        shapes[spec.name] = tuple(shape)
    return shapes


def load_input_files(paths: Union[str, Iterable[str]], specs: Sequence[InputSpec]) -> Dict[str, np.ndarray]:
    """User data: `data.npz` (arrays by input name), `name:file.npy`, or a bare `file.npy` for a single input.

    Never unpickles (allow_pickle=False); arrays of strings, objects or records are refused with the input's name.
    """
    names = [spec.name for spec in specs]
    arrays: Dict[str, np.ndarray] = {}
    for text in as_paths(paths, "input_files"):
        name = None
        path_text = text
        if not Path(text).exists() and ":" in text:
            name, _, path_text = text.partition(":")
        path = Path(path_text)
        if not path.is_file():
            raise InputFileError(f"{path}: input data file not found")
        for key, array in _read_arrays(path):
            if key is None:
                if name is None and len(names) != 1:
                    raise UsageError(f"{path}: a .npy file needs an input name (NAME:{path}); inputs are {names}")
                key = name or names[0]
            if array.dtype.kind not in _NUMERIC_KINDS:
                raise InputFileError(f"{path}: array for input {key!r} has dtype {array.dtype}; "
                                     "input data must be numeric or bool")
            arrays[key] = array
    unknown = set(arrays) - set(names)
    if unknown:
        raise UsageError(f"input data names unknown input(s) {sorted(unknown)}; the model's inputs are: {names}")
    return arrays


# bool, signed and unsigned integers, floats, complex (ml_dtypes' bfloat16 and float8 are kind 'V' and cannot be
# stored in .npy without pickling anyway).
_NUMERIC_KINDS = "biufc"


def _read_arrays(path: Path) -> List[Tuple[Optional[str], np.ndarray]]:
    """(name, array) pairs of an .npz, or [(None, array)] for an .npy; unreadable files raise InputFileError."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return [(None, loaded)]
        with loaded:
            return [(key, loaded[key]) for key in loaded.files]
    except Exception as error:  # numpy and zipfile raise many types for a damaged or pickled file
        reason = str(error).split("\n")[0] or type(error).__name__
        if "allow_pickle" in reason:
            reason = "it holds Python objects (pickled data), which bnfold never loads"
        raise InputFileError(f"{path}: not a readable .npy/.npz file ({reason})") from None


def random_array(dtype: np.dtype, shape: Tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Seeded data of the input's dtype: normal floats, small non-negative integers, coin-flip booleans."""
    dtype = np.dtype(dtype)  # np.asarray: a rank-0 draw is a numpy scalar, which ONNX Runtime cannot take
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if np.issubdtype(dtype, np.integer):
        return np.asarray(rng.integers(0, 8, size=shape), dtype)
    return np.asarray(rng.standard_normal(shape), dtype)


def make_inputs(
    model,
    *,
    shapes: Optional[Mapping[Optional[str], Tuple[int, ...]]] = None,
    provided: Optional[Mapping[str, np.ndarray]] = None,
    seed: int = 0,
) -> Dict[str, np.ndarray]:
    """Feeds for every graph input: the user's arrays where given, seeded random data of the right shape elsewhere."""
    seed = as_seed(seed)
    specs = graph_inputs(model)
    provided = dict(provided or {})
    missing = [spec for spec in specs if spec.name not in provided]
    wanted = {name: shape for name, shape in (shapes or {}).items() if name not in provided}
    if None in wanted and len(missing) == 1:
        wanted[missing[0].name] = wanted.pop(None)
    return feeds_for(specs, resolve_shapes(missing, wanted), provided, seed)


def feeds_for(specs: Sequence[InputSpec], shapes: Mapping[str, Tuple[int, ...]],
              provided: Mapping[str, np.ndarray], seed: int) -> Dict[str, np.ndarray]:
    """The user's arrays where given, seeded random data of the given shape elsewhere."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if spec.name in provided:
            feeds[spec.name] = np.asarray(provided[spec.name]).astype(spec.dtype, copy=False)
        else:
            feeds[spec.name] = random_array(spec.dtype, shapes[spec.name], rng)
    return feeds
