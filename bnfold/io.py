"""Loading and saving ONNX models with typed errors, safe external data and atomic writes."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

import onnx
from onnx import numpy_helper
from google.protobuf.message import DecodeError

from .errors import ExternalDataError, InputFileError, InvalidModelError, ModelLoadError, OutputError

PathLike = Union[str, "os.PathLike[str]"]

# Protobuf cannot serialize a message of 2 GiB or more; above this, weights go to an external file.
PROTOBUF_LIMIT = 2**31 - 1
# Tensors at least this large move to the external data file when external data is written.
EXTERNAL_DATA_MIN_BYTES = 1024


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in the model: initializers, Constant/attribute tensors, subgraphs and functions."""

    def from_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from from_node(node)

    def from_node(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from from_graph(attr.g)
            for sub in attr.graphs:
                yield from from_graph(sub)

    yield from from_graph(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from from_node(node)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_info(tensor: onnx.TensorProto) -> dict:
    return {entry.key: entry.value for entry in tensor.external_data}


def _check_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external data that is missing, truncated, or outside the model's directory."""
    base = base_dir.resolve()
    for tensor in iter_tensors(model):
        if not _is_external(tensor):
            continue
        info = _external_info(tensor)
        location = info.get("location", "")
        if not location:
            raise ExternalDataError(f"tensor {tensor.name!r} is marked external but names no file")
        if os.path.isabs(location):
            raise ExternalDataError(
                f"tensor {tensor.name!r}: external data path {location!r} is absolute; "
                "bnfold only reads data files inside the model's directory"
            )
        target = (base / location).resolve()
        if base not in target.parents and target != base:
            raise ExternalDataError(
                f"tensor {tensor.name!r}: external data path {location!r} leaves the model's directory; refused"
            )
        if not target.is_file():
            raise ExternalDataError(f"tensor {tensor.name!r}: external data file {location!r} is missing")
        size = target.stat().st_size
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        end = offset + int(length) if length else None
        if offset > size or (end is not None and end > size):
            raise ExternalDataError(
                f"tensor {tensor.name!r}: external data file {location!r} is truncated "
                f"({size} bytes, tensor needs bytes {offset}..{end if end is not None else '?'})"
            )


def load_model(path: PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX model, raising a typed error for anything a user could have got wrong."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, expected an .onnx file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputFileError(f"{path}: cannot read ({error.strerror or error})") from None
    if not data:
        raise ModelLoadError(f"{path}: file is empty")
    model = parse_model_bytes(data, source=str(path))
    del data
    if load_external_data and any(_is_external(t) for t in iter_tensors(model)):
        _check_external_data(model, path.parent)
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as error:
            raise ExternalDataError(f"{path}: cannot load external data ({error})") from None
    return model


def parse_model_bytes(data: bytes, *, source: str = "<bytes>") -> onnx.ModelProto:
    """Parse serialized bytes into a ModelProto, or raise ModelLoadError saying why not."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"{source}: not an ONNX model, or truncated (protobuf: {error})") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{source}: not an ONNX model (no IR version or no graph); is it truncated?")
    return model


def check_model(model: onnx.ModelProto, *, full_check: bool = False) -> None:
    """Run onnx.checker, turning its verdict into InvalidModelError with the checker's first line."""
    try:
        if model.ByteSize() > PROTOBUF_LIMIT:
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / "model.onnx"
                save_model(model, target, external_data=True)
                onnx.checker.check_model(str(target), full_check=full_check)
        else:
            onnx.checker.check_model(model, full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidModelError(f"model fails onnx.checker: {first_line}") from None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomically(path: Path, chunks) -> None:
    """Write chunks to a temp file beside `path`, fsync, and rename: readers see the old or the new file."""
    directory = path.parent
    if not directory.is_dir():
        raise OutputError(f"{path}: output directory {directory} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise OutputError(f"{path}: cannot write to {directory} ({error.strerror or error})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as error:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        reason = "disk full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise OutputError(f"{path}: write failed ({reason}); nothing was written") from None
    _fsync_dir(directory)


def _externalize(model: onnx.ModelProto, data_name: str) -> Optional[list]:
    """Move large tensors' bytes out of `model`; return the byte chunks of the data file, or None if none moved."""
    chunks = []
    offset = 0
    for tensor in iter_tensors(model):
        if _is_external(tensor):
            continue
        if not tensor.HasField("raw_data"):
            if tensor.ByteSize() < EXTERNAL_DATA_MIN_BYTES:
                continue
            # Typed fields (float_data, ...) move to raw_data first so their bytes can leave the proto.
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
        raw = tensor.raw_data
        if len(raw) < EXTERNAL_DATA_MIN_BYTES:
            continue
        padding = (-offset) % 4096  # page-aligned, as onnx does, so runtimes can mmap
        if padding:
            chunks.append(b"\0" * padding)
            offset += padding
        chunks.append(raw)
        del tensor.external_data[:]
        for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        offset += len(raw)
    return chunks or None


def save_model(
    model: onnx.ModelProto,
    path: PathLike,
    *,
    external_data: Optional[bool] = None,
) -> None:
    """Save `model` to `path` atomically.

    external_data: True writes tensors of 1 KiB or more to `<file name>.data` beside the model; None (default)
    does so only when the model would exceed protobuf's 2 GiB limit. `model` itself is not modified.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    if external_data is None:
        external_data = model.ByteSize() > PROTOBUF_LIMIT
    if not external_data:
        _write_atomically(path, [model.SerializeToString()])
        return
    data_name = path.name + ".data"
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    chunks = _externalize(stripped, data_name)
    if chunks:
        _write_atomically(path.parent / data_name, chunks)
    _write_atomically(path, [stripped.SerializeToString()])
