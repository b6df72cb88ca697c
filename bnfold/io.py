"""Loading and saving ONNX models with typed errors, safe external data and crash-safe writes.

Loading refuses, with one line a user can act on, anything that is not a complete, well-formed model: a missing
path, a directory, an empty file, bytes that do not parse, a model whose tensors do not hold the data their shape
and type promise (a truncated or bit-flipped file often still parses), strings that are not UTF-8, and external
data that is missing, truncated, or outside the model's directory.

Saving writes every file (model, and external data when asked) to a temporary file in the target directory,
flushes and fsyncs it, and only then renames it over the target: a reader, or a run killed at any moment, sees the
old file or the complete new one. A failed write removes its temporary files and leaves the targets untouched.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import onnx
from onnx import helper, numpy_helper
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, EncodeError

from .errors import (BnfoldError, ExternalDataError, InputFileError, InvalidModelError, ModelLoadError,
                     OutputError)

PathLike = Union[str, "os.PathLike[str]"]

# Protobuf cannot serialize a message of 2 GiB or more; above this, weights go to an external file.
PROTOBUF_LIMIT = 2**31 - 1
# Tensors at least this large move to the external data file when external data is written.
EXTERNAL_DATA_MIN_BYTES = 1024
# What numpy_helper.to_array raises for a tensor whose data does not match its shape and type.
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError, UnicodeDecodeError)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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


# Element types stored several to a byte: their size in bytes is not numpy's itemsize times the element count.
_ELEMENTS_PER_BYTE = {
    getattr(onnx.TensorProto, name): per_byte
    for name, per_byte in (("INT4", 2), ("UINT4", 2), ("FLOAT4E2M1", 2), ("INT2", 4), ("UINT2", 4))
    if hasattr(onnx.TensorProto, name)
}


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held in the model (initializers, Constant and attribute tensors, subgraphs, functions),
    computed from dims and type without serializing; external data, string tensors and unknown types count 0."""
    total = 0
    for tensor in iter_tensors(model):
        if tensor.data_type == onnx.TensorProto.STRING or _is_external(tensor):
            continue
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except KeyError:
            continue
        elements = 1
        for dim in tensor.dims:
            elements *= max(int(dim), 0)
        per_byte = _ELEMENTS_PER_BYTE.get(tensor.data_type)
        total += -(-elements // per_byte) if per_byte else elements * itemsize
    return total


def exceeds_protobuf_limit(model: onnx.ModelProto) -> bool:
    """Whether the serialized model would pass protobuf's 2 GiB limit: its tensor bytes against the limit less a
    1/32 allowance (64 MiB) for everything else. ByteSize() would serialize the whole model to find out."""
    return tensor_bytes(model) > PROTOBUF_LIMIT - PROTOBUF_LIMIT // 32


# --- well-formedness -------------------------------------------------------------------------------------------


def _external_tensor_problem(tensor: onnx.TensorProto) -> Optional[str]:
    """What can be checked of an external tensor before its data is read: a known type and a file name."""
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING) or \
            tensor.data_type not in onnx.TensorProto.DataType.values():
        return f"external tensor {tensor.name!r} has data type {tensor.data_type}, which cannot be stored externally"
    if not _external_info(tensor).get("location"):
        return f"tensor {tensor.name!r} is marked external but names no file"
    return None


def _tensor_problem(tensor: onnx.TensorProto) -> Optional[str]:
    """Why the tensor's data cannot be read as its declared shape and type, or None when it can."""
    if _is_external(tensor):
        return _external_tensor_problem(tensor)
    try:
        numpy_helper.to_array(tensor)
    except _DECODE_ERRORS as error:
        dims = "x".join(str(d) for d in tensor.dims) or "scalar"
        type_name = onnx.TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in \
            onnx.TensorProto.DataType.values() else f"unknown type {tensor.data_type}"
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"tensor {tensor.name!r} ({type_name}, {dims}) does not hold valid data: {detail}"
    return None


def _is_repeated(field) -> bool:
    # protobuf 5.26+ has is_repeated; `label` is gone from newer releases.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def _string_fields(descriptor) -> List[Tuple[str, bool, bool]]:
    """(name, repeated, is_message) of the string and message fields of a message type: the only ones the walk
    reads, so tensors' bytes fields (raw_data) are never copied out of the proto."""
    return [
        (field.name, _is_repeated(field), field.type == FieldDescriptor.TYPE_MESSAGE)
        for field in descriptor.fields
        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE)
    ]


def _structure_problem(model: onnx.ModelProto) -> Optional[BnfoldError]:
    """The error for the first string field that is not UTF-8 (proto2 parsing accepts any bytes there) or tensor
    whose data does not match its shape and type (of an external tensor: its type and file name; its data is checked
    once loaded), or None for a well-formed model."""
    fields_by_type = {}
    pending = [model]
    while pending:
        message = pending.pop()
        if isinstance(message, onnx.TensorProto):
            problem = _tensor_problem(message)
            if problem and _is_external(message):
                return ExternalDataError(problem)
            if problem:
                return ModelLoadError(f"corrupt model, {problem}; is it truncated or damaged?")
        descriptor = message.DESCRIPTOR
        fields = fields_by_type.get(descriptor.full_name)
        if fields is None:
            fields = fields_by_type[descriptor.full_name] = _string_fields(descriptor)
        for name, repeated, is_message in fields:
            if repeated:
                values = getattr(message, name)
                if is_message:
                    pending.extend(values)
                elif any(isinstance(value, bytes) for value in values):
                    return ModelLoadError(f"corrupt model, {descriptor.name}.{name} is not valid UTF-8")
            elif is_message:
                if message.HasField(name):
                    pending.append(getattr(message, name))
            elif isinstance(getattr(message, name), bytes):
                return ModelLoadError(f"corrupt model, {descriptor.name}.{name} is not valid UTF-8")
    return None


# --- loading ---------------------------------------------------------------------------------------------------


def _external_location(tensor: onnx.TensorProto, base: Path) -> Tuple[Path, int, Optional[int]]:
    """The resolved data file, offset and length of an external tensor, refusing paths outside `base`."""
    info = _external_info(tensor)
    location = info.get("location", "")
    if not location:
        raise ExternalDataError(f"tensor {tensor.name!r} is marked external but names no file")
    if os.path.isabs(location) or location.startswith(("\\", "/")):
        raise ExternalDataError(
            f"tensor {tensor.name!r}: external data path {location!r} is absolute; "
            "bnfold only reads data files inside the model's directory"
        )
    try:
        target = (base / location).resolve()
    except (ValueError, OSError) as error:
        raise ExternalDataError(f"tensor {tensor.name!r}: external data path {location!r} is invalid ({error})") \
            from None
    if base not in target.parents:
        raise ExternalDataError(
            f"tensor {tensor.name!r}: external data path {location!r} leaves the model's directory; refused"
        )
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise ExternalDataError(f"tensor {tensor.name!r}: external data offset/length are not integers "
                                f"({info.get('offset')!r}, {info.get('length')!r})") from None
    if offset < 0 or (length is not None and length < 0):
        raise ExternalDataError(f"tensor {tensor.name!r}: negative external data offset or length")
    return target, offset, length


def _check_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external data that is missing, truncated, or outside the model's directory (symlinks resolved)."""
    base = base_dir.resolve()
    for tensor in iter_tensors(model):
        if not _is_external(tensor):
            continue
        target, offset, length = _external_location(tensor, base)
        location = _external_info(tensor)["location"]
        if not target.is_file():
            raise ExternalDataError(f"tensor {tensor.name!r}: external data file {location!r} is missing")
        size = target.stat().st_size
        end = offset + length if length is not None else None
        if offset > size or (end is not None and end > size):
            raise ExternalDataError(
                f"tensor {tensor.name!r}: external data file {location!r} is truncated "
                f"({size} bytes, tensor needs bytes {offset}..{end if end is not None else '?'})"
            )


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    external = [tensor for tensor in iter_tensors(model) if _is_external(tensor)]
    if not external:
        return
    _check_external_data(model, path.parent)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as error:
        raise ExternalDataError(f"{path}: cannot load external data ({error})") from None
    for tensor in external:
        tensor.ClearField("data_location")  # onnx sets it to DEFAULT; cleared, the model serializes as if inline
        problem = _tensor_problem(tensor)
        if problem:
            raise ExternalDataError(f"{path}: external data of {problem}")


def _readable_file(path: Path) -> None:
    """Raise InputFileError / ModelLoadError for a path that cannot hold a model at all."""
    try:
        is_dir = path.is_dir()
        exists = path.exists()
        empty = exists and not is_dir and path.stat().st_size == 0
    except (ValueError, OSError) as error:
        raise InputFileError(f"{path}: not a usable path ({error})") from None
    if is_dir:
        raise InputFileError(f"{path}: is a directory, expected an .onnx file")
    if not exists:
        raise InputFileError(f"{path}: no such file")
    if empty:
        raise ModelLoadError(f"{path}: file is empty")


def load_model(path: PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX model, raising a typed error for anything a user could have got wrong."""
    path = Path(path)
    _readable_file(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputFileError(f"{path}: cannot read ({error.strerror or error})") from None
    model = parse_model_bytes(data, source=str(path))
    del data
    if load_external_data:
        _load_external_data(model, path)
    return model


# ModelProto fields that hold the weights: read_header skips them.
_BULKY_MODEL_FIELDS = {7, 20, 25}  # graph, training_info, functions


def _varint(data, position: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise DecodeError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def read_header(path: PathLike) -> onnx.ModelProto:
    """The model file's top-level fields (IR version, opsets, producer, metadata) without its graph or functions.

    It walks the protobuf wire format of a memory map and parses only what it keeps, so checking a model's opsets
    costs neither a read of its weights into memory nor a parse of them.
    """
    path = Path(path)
    _readable_file(path)
    kept = []
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            position = 0
            while position < len(data):
                start = position
                key, position = _varint(data, position)
                wire_type = key & 7
                if wire_type == 0:
                    _, position = _varint(data, position)
                elif wire_type == 1:
                    position += 8
                elif wire_type == 2:
                    length, position = _varint(data, position)
                    position += length
                elif wire_type == 5:
                    position += 4
                else:
                    raise DecodeError(f"wire type {wire_type}")
                if position > len(data):
                    raise DecodeError("field runs past the end of the file")
                if key >> 3 not in _BULKY_MODEL_FIELDS:
                    kept.append(data[start:position])
        header = onnx.ModelProto()
        header.ParseFromString(b"".join(kept))
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"{path}: not an ONNX model, or truncated (protobuf: {error})") from None
    except OSError as error:
        raise InputFileError(f"{path}: cannot read ({error.strerror or error})") from None
    if header.ir_version <= 0:
        raise ModelLoadError(f"{path}: not an ONNX model (no IR version); is it truncated?")
    return header


def parse_model_bytes(data: bytes, *, source: str = "<bytes>") -> onnx.ModelProto:
    """Parse serialized bytes into a well-formed ModelProto, or raise ModelLoadError (ExternalDataError for an
    external tensor with no file name or a type that cannot be stored externally) saying why not.

    Beyond protobuf's own parsing: the model needs an IR version and a graph, every string must be UTF-8 and every
    tensor's data must match its shape and type (external tensors' data is checked by load_model once read).
    """
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"{source}: not an ONNX model, or truncated (protobuf: {error})") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{source}: not an ONNX model (no IR version or no graph); is it truncated?")
    problem = _structure_problem(model)
    if problem:
        raise type(problem)(f"{source}: {problem}")
    return model


# --- checking --------------------------------------------------------------------------------------------------


def _newer_opset(model: onnx.ModelProto) -> Optional[str]:
    """A message when the model imports an opset of an ONNX domain newer than the installed onnx knows."""
    known = onnx.defs.C.schema_version_map()
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        if domain in known and opset.version > known[domain][1]:
            label = opset.domain or "ai.onnx (default)"
            return (f"model imports opset {opset.version} of domain {label}, but the installed onnx "
                    f"{onnx.__version__} knows only up to {known[domain][1]}; upgrade onnx (or pass --no-check)")
    return None


def _explain_external_data(path: Path) -> None:
    """When the checker refused a model file, raise bnfold's own ExternalDataError if external data is at fault."""
    model = load_model(path, load_external_data=False)
    if any(_is_external(tensor) for tensor in iter_tensors(model)):
        _check_external_data(model, path.parent)


def check_model(model: Union[onnx.ModelProto, PathLike], *, full_check: bool = False) -> None:
    """Run onnx.checker, turning its verdict into InvalidModelError with the checker's message on one line.

    `model` is a ModelProto or the path of a model file (checked in place, external data and all, with no copy).
    Also refuses an opset newer than the installed onnx knows: the checker lets it pass, but its operators cannot be
    checked and ONNX Runtime cannot run it.
    """
    newer = _newer_opset(model if isinstance(model, onnx.ModelProto) else read_header(model))
    if newer:
        raise InvalidModelError(newer)
    try:
        if not isinstance(model, onnx.ModelProto):
            onnx.checker.check_model(str(model), full_check=full_check)
        elif exceeds_protobuf_limit(model):
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / "model.onnx"
                save_model(model, target, external_data=True)
                onnx.checker.check_model(str(target), full_check=full_check)
        else:
            onnx.checker.check_model(model, full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        if not isinstance(model, onnx.ModelProto):
            _explain_external_data(Path(model))
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise InvalidModelError(f"model fails onnx.checker: {message or type(error).__name__}") from None
    except UnicodeDecodeError:
        # The checker names the offending field in its message, which then is not UTF-8 itself.
        raise InvalidModelError("model fails onnx.checker: a name or string in the model is not valid UTF-8") \
            from None
    except ValueError as error:
        # onnx's C++ side re-parses the model and refuses some protos Python's parser accepted.
        raise InvalidModelError(f"onnx.checker cannot read the model: {str(error).splitlines()[0]}") from None


# --- saving ----------------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make the renames durable; some filesystems cannot fsync a directory, which is not an error."""
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


def _new_file_mode(target: Path) -> int:
    """The mode a plain open() would give: the replaced file's, else 0o666 less the umask (mkstemp uses 0o600)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _write_error(path: Path, error: OSError) -> OutputError:
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: cannot write to {path.parent} ({error.strerror}); nothing was written")
    reason = "disk full" if error.errno in _DISK_FULL else (error.strerror or str(error))
    return OutputError(f"{path}: write failed ({reason}); nothing was written")


def _write_temporary(path: Path, chunks: Iterable[bytes]) -> str:
    """Write chunks to a new temporary file beside `path`, flushed and fsynced; return its name."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _new_file_mode(path))
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        _remove_quietly(tmp_name)
        raise
    return tmp_name


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _write_files_atomically(files: Sequence[Tuple[Path, Iterable[bytes]]]) -> None:
    """Write every file to a temporary one first and rename them over their targets in order only when all are
    complete: a failure (disk full, interrupt) before the renames leaves every target as it was and no temporary
    file behind. Put the file that refers to the others (the model) last."""
    for path, _ in files:
        if not path.parent.is_dir():
            raise OutputError(f"{path}: output directory {path.parent} does not exist")
    written: List[Tuple[str, Path]] = []
    try:
        for path, chunks in files:
            try:
                written.append((_write_temporary(path, chunks), path))
            except OSError as error:
                raise _write_error(path, error) from None
        while written:
            tmp_name, path = written[0]
            try:
                os.replace(tmp_name, path)
            except OSError as error:
                raise _write_error(path, error) from None
            written.pop(0)
    finally:
        for tmp_name, _ in written:
            _remove_quietly(tmp_name)
    for directory in {path.parent for path, _ in files}:
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


def _serialize(model: onnx.ModelProto, path: Path) -> Iterator[bytes]:
    """model.SerializeToString(), byte for byte, in pieces: the graph's nodes and initializers one at a time, so
    saving never holds a second copy of the weights (one serialized string would be two: upb's and Python's)."""
    if exceeds_protobuf_limit(model):
        raise OutputError(f"{path}: the model holds {tensor_bytes(model) / 2**30:.1f} GiB of tensors, above "
                          "protobuf's 2 GiB limit; write its weights as external data (--external-data)")
    try:
        if unknown_fields.UnknownFieldSet(model) or unknown_fields.UnknownFieldSet(model.graph):
            yield model.SerializeToString()  # fields this onnx does not know: let protobuf keep them in place
            return
        for field, value in model.ListFields():
            if field.name == "graph":
                yield from _graph_pieces(field.number, value)
            else:
                yield _single_field(onnx.ModelProto(), field, value)
    except (EncodeError, ValueError) as error:
        raise OutputError(f"{path}: the model cannot be serialized ({error})") from None


# GraphProto fields serialized element by element; everything else is small.
_STREAMED_GRAPH_FIELDS = ("node", "initializer")


def _graph_pieces(number: int, graph: onnx.GraphProto) -> Iterator[bytes]:
    """The graph as field `number` of its parent: tag, length, then its fields in field-number order."""
    plan, size = [], 0
    for field, value in graph.ListFields():
        if field.name in _STREAMED_GRAPH_FIELDS:
            for element in value:
                length = element.ByteSize()
                head = _varint_bytes(field.number << 3 | 2) + _varint_bytes(length)
                plan.append((head, element))
                size += len(head) + length
        else:
            encoded = _single_field(onnx.GraphProto(), field, value)
            plan.append((encoded, None))
            size += len(encoded)
    yield _varint_bytes(number << 3 | 2) + _varint_bytes(size)
    for head, element in plan:
        yield head
        if element is not None:
            yield element.SerializeToString()


def _single_field(container, field, value) -> bytes:
    """One field of a message, encoded as the message would encode it."""
    if _is_repeated(field):
        getattr(container, field.name).extend(value)
    elif field.message_type is not None:
        getattr(container, field.name).CopyFrom(value)
    else:
        setattr(container, field.name, value)
    return container.SerializeToString()


def _varint_bytes(value: int) -> bytes:
    encoded = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            encoded.append(low)
            return bytes(encoded)
        encoded.append(low | 0x80)


def save_model(
    model: onnx.ModelProto,
    path: PathLike,
    *,
    external_data: Optional[bool] = None,
) -> None:
    """Save `model` to `path` atomically (see the module docstring).

    external_data: True writes tensors of 1 KiB or more to `<file name>.data` beside the model; None (default)
    does so only when the model would exceed protobuf's 2 GiB limit. `model` itself is not modified. The data file
    is renamed into place just before the model: only a kill between those two renames can pair a new data file
    with the old model, and only when the old model used the same data file name.
    """
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except (ValueError, OSError) as error:
        raise OutputError(f"{path}: not a usable output path ({error})") from None
    if is_dir:
        raise OutputError(f"{path}: is a directory")
    if external_data is None:
        external_data = exceeds_protobuf_limit(model)
    if not external_data:
        _write_files_atomically([(path, _serialize(model, path))])
        return
    data_name = path.name + ".data"
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    chunks = _externalize(stripped, data_name)
    files = [(path.parent / data_name, chunks)] if chunks else []
    files.append((path, _serialize(stripped, path)))
    _write_files_atomically(files)
