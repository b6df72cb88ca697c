"""Reading a model file: what a path must be to hold a model (a regular, non-empty file or a stream), the file
memory-mapped and parsed (bnfold.parsing) or a stream read whole, and a model's header without its weights.
"""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path
from typing import List, Optional, Tuple, Union

import onnx
from google.protobuf.message import DecodeError

from .errors import InputFileError, ModelLoadError
from .parsing import parse_checked
from .wire import fields

PathLike = Union[str, "os.PathLike[str]"]

# ModelProto fields that hold the weights: read_header skips them.
_BULKY_MODEL_FIELDS = {7, 20, 25}  # graph, training_info, functions


def is_stream(path: PathLike) -> bool:
    """Whether the path is a pipe, FIFO, socket or character device (`/dev/stdin`, `<(...)`): a stream that can be
    read once, to its end, and has no size to check or map."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def read_stream(path: PathLike) -> bytes:
    """The whole of a stream (see is_stream), read into memory: a model from a pipe is parsed from these bytes, as
    often as it is needed, since the pipe cannot be read again."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise InputFileError(f"{path}: cannot read ({error.strerror or error})") from None
    if not data:
        raise ModelLoadError(f"{path}: the stream ended before any byte was read (nothing was written to it)")
    return data


def readable_file(path: Path) -> None:
    """Raise InputFileError / ModelLoadError for a path that cannot hold a model at all."""
    try:
        is_dir = path.is_dir()
        exists = path.exists()
        empty = exists and not is_dir and path.stat().st_size == 0 and not is_stream(path)
    except (ValueError, OSError) as error:
        raise InputFileError(f"{path}: not a usable path ({error})") from None
    if is_dir:
        raise InputFileError(f"{path}: is a directory, expected an .onnx file")
    if not exists:
        raise InputFileError(f"{path}: no such file")
    if empty:
        raise ModelLoadError(f"{path}: file is empty")


def read_model(path: Path, held=None, data: Optional[bytes] = None) -> Tuple[onnx.ModelProto, List[onnx.TensorProto]]:
    """Parse a model file, well-formedness checked but external data not loaded; also return the tensors whose data
    was measured against their dims and type while parsing (see bnfold.parsing). With `held` (a
    bnfold.tensor_store.TensorStore open on `path`), their bytes stay in the file. `data`: the file's bytes, already read
    (a stream); a stream not read yet is read whole here."""
    if data is None:
        readable_file(path)
        if is_stream(path):
            data = read_stream(path)
    if data is not None:
        return parse_checked(data, str(path))
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return parse_checked(data, str(path), held)
    except OSError as error:
        raise InputFileError(f"{path}: cannot read ({error.strerror or error})") from None


def read_header(path: PathLike) -> onnx.ModelProto:
    """The model file's top-level fields (IR version, opsets, producer, metadata) without its graph or functions.

    It walks the protobuf wire format of a memory map and parses only what it keeps, so checking a model's opsets
    costs neither a read of its weights into memory nor a parse of them.
    """
    path = Path(path)
    readable_file(path)
    kept = []
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for number, _, start, _, end in fields(data, 0, len(data)):
                if number not in _BULKY_MODEL_FIELDS:
                    kept.append(data[start:end])
        header = onnx.ModelProto()
        header.ParseFromString(b"".join(kept))
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"{path}: not an ONNX model, or truncated (protobuf: {error})") from None
    except OSError as error:
        raise InputFileError(f"{path}: cannot read ({error.strerror or error})") from None
    if header.ir_version <= 0:
        raise ModelLoadError(f"{path}: not an ONNX model (no IR version); is it truncated?")
    return header
