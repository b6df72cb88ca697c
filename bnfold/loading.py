"""Loading and checking ONNX models with typed errors and safe external data.

Loading refuses, with one line a user can act on, anything that is not a complete, well-formed model: a missing
path, a directory, an empty file, bytes that do not parse, a model whose tensors do not hold the data their shape
and type promise (a truncated or bit-flipped file often still parses), strings that are not UTF-8, and external
data that is missing, truncated, or outside the model's directory.

Over 300 lines on purpose: the memory-mapped parse, the structure walk, external data and the checker on a
weightless skeleton are one load, and each guards the next.
"""

from __future__ import annotations

import mmap
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import onnx
from onnx import numpy_helper
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from .errors import BnfoldError, ExternalDataError, InputFileError, InvalidModelError, ModelLoadError
from .held import HOLDABLE_TYPES
from .tensors import exceeds_protobuf_limit, external_info, is_external, iter_tensors

PathLike = Union[str, "os.PathLike[str]"]

# What numpy_helper.to_array raises for a tensor whose data does not match its shape and type.
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError, UnicodeDecodeError)


# --- well-formedness -------------------------------------------------------------------------------------------


def _external_tensor_problem(tensor: onnx.TensorProto) -> Optional[str]:
    """What can be checked of an external tensor before its data is read: a known type and a file name."""
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING) or \
            tensor.data_type not in onnx.TensorProto.DataType.values():
        return f"external tensor {tensor.name!r} has data type {tensor.data_type}, which cannot be stored externally"
    if not external_info(tensor).get("location"):
        return f"tensor {tensor.name!r} is marked external but names no file"
    return None


def _tensor_problem(tensor: onnx.TensorProto) -> Optional[str]:
    """Why the tensor's data cannot be read as its declared shape and type, or None when it can."""
    if is_external(tensor):
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


def set_field(message, field, value) -> None:
    """Give `message` the value of one field (from another message's ListFields()): extend, copy or assign."""
    if _is_repeated(field):
        getattr(message, field.name).extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _string_fields(descriptor) -> List[Tuple[str, bool, bool]]:
    """(name, repeated, is_message) of the string and message fields of a message type: the only ones the walk
    reads, so tensors' bytes fields (raw_data) are never copied out of the proto."""
    return [
        (field.name, _is_repeated(field), field.type == FieldDescriptor.TYPE_MESSAGE)
        for field in descriptor.fields
        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE)
    ]


def _structure_problem(model: onnx.ModelProto, measured: Sequence[onnx.TensorProto] = ()) -> Optional[BnfoldError]:
    """The error for the first string field that is not UTF-8 (proto2 parsing accepts any bytes there) or tensor
    whose data does not match its shape and type (of an external tensor: its type and file name; its data is checked
    once loaded), or None for a well-formed model. `measured` tensors' data is known to match (see _parse_pieces):
    they are not decoded again."""
    measured_ids = {id(tensor) for tensor in measured}
    fields_by_type = {}
    pending = [model]
    while pending:
        message = pending.pop()
        if isinstance(message, onnx.TensorProto) and id(message) not in measured_ids:
            problem = _tensor_problem(message)
            if problem and is_external(message):
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
    info = external_info(tensor)
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
        if not is_external(tensor):
            continue
        target, offset, length = _external_location(tensor, base)
        location = external_info(tensor)["location"]
        if not target.is_file():
            raise ExternalDataError(f"tensor {tensor.name!r}: external data file {location!r} is missing")
        size = target.stat().st_size
        end = offset + length if length is not None else None
        if offset > size or (end is not None and end > size):
            raise ExternalDataError(
                f"tensor {tensor.name!r}: external data file {location!r} is truncated "
                f"({size} bytes, tensor needs bytes {offset}..{end if end is not None else '?'})"
            )


def _load_external_data(model: onnx.ModelProto, path: Path, data_files: Optional[list] = None) -> None:
    external = [tensor for tensor in iter_tensors(model) if is_external(tensor)]
    if not external:
        return
    _check_external_data(model, path.parent)
    if data_files is not None:
        base = path.parent.resolve()
        data_files.extend(dict.fromkeys(_external_location(tensor, base)[0] for tensor in external))
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as error:
        raise ExternalDataError(f"{path}: cannot load external data ({error})") from None
    for tensor in external:
        tensor.ClearField("data_location")  # onnx sets it to DEFAULT; cleared, the model serializes as if inline
        problem = _tensor_problem(tensor)
        if problem:
            raise ExternalDataError(f"{path}: external data of {problem}")


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


def _readable_file(path: Path) -> None:
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


def _read_model(path: Path, held=None, data: Optional[bytes] = None) -> Tuple[onnx.ModelProto, List[onnx.TensorProto]]:
    """Parse a model file, well-formedness checked but external data not loaded; also return the tensors whose data
    was measured against their dims and type while parsing (see _parse_pieces). With `held` (a
    bnfold.held.HeldTensors open on `path`), their bytes stay in the file. `data`: the file's bytes, already read
    (a stream); a stream not read yet is read whole here."""
    if data is None:
        _readable_file(path)
        if is_stream(path):
            data = read_stream(path)
    if data is not None:
        return _parse_checked(data, str(path))
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse_checked(data, str(path), held)
    except OSError as error:
        raise InputFileError(f"{path}: cannot read ({error.strerror or error})") from None


def load_model(path: PathLike, *, load_external_data: bool = True, held=None, data: Optional[bytes] = None,
               data_files: Optional[list] = None) -> onnx.ModelProto:
    """Read an ONNX model, raising a typed error for anything a user could have got wrong. held: a
    bnfold.held.HeldTensors open on `path`, to keep large initializers' bytes in the file (see bnfold.held).
    data: the file's bytes when they were read already (a stream: see read_stream). data_files: a list that gets
    the external data files read."""
    path = Path(path)
    model, _ = _read_model(path, held, data)
    if load_external_data:
        _load_external_data(model, path, data_files)
    return model


def load_checked_model(path: PathLike, *, check: bool = True, held=None, data: Optional[bytes] = None,
                       data_files: Optional[list] = None) -> onnx.ModelProto:
    """load_model, and (with check) check_model's verdict on it, reading and parsing the file once.

    The checker sees the model's skeleton: tensors whose data the loader has measured against their dims and type
    keep those but not their bytes, which the checker would only have measured again (see _checker_skeleton).
    """
    path = Path(path)
    model, measured = _read_model(path, held, data)
    if check:
        from .graph.order import sort_nodes

        if any(is_external(tensor) for tensor in iter_tensors(model)) and data is None:
            try:
                check_model(path)  # the checker's own external-data rules need the files beside the model
            except InvalidModelError:
                # Refused for nodes out of order? The skeleton, sorted as fold() will sort the model, decides.
                external = [tensor for tensor in iter_tensors(model) if is_external(tensor)]  # held: ids stay valid
                skeleton = _checker_skeleton(model, {id(tensor) for tensor in external})
                if not sort_nodes(skeleton):
                    raise
                check_model(skeleton)
        else:
            _check_skeleton(model, measured)
    _load_external_data(model, path, data_files)
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
            for number, _, start, _, end in _fields(data, 0, len(data)):
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


def parse_model_bytes(data: bytes, *, source: str = "<bytes>") -> onnx.ModelProto:
    """Parse serialized bytes into a well-formed ModelProto, or raise ModelLoadError (ExternalDataError for an
    external tensor with no file name or a type that cannot be stored externally) saying why not.

    Beyond protobuf's own parsing: the model needs an IR version and a graph, every string must be UTF-8 and every
    tensor's data must match its shape and type (external tensors' data is checked by load_model once read).
    """
    return _parse_checked(data, source)[0]


def _parse_checked(data, source: str, held=None) -> Tuple[onnx.ModelProto, List[onnx.TensorProto]]:
    try:
        model, measured = _parse_pieces(data, held)
    except (DecodeError, RuntimeError, ValueError):
        # Protobuf's own parse, for its verdict and its words (the piecewise walk refuses some odd encodings it takes).
        model, measured = onnx.ModelProto(), []
        try:
            with memoryview(data) as view:
                model.ParseFromString(view)
        except (DecodeError, RuntimeError, ValueError) as error:
            raise ModelLoadError(f"{source}: not an ONNX model, or truncated (protobuf: {error})") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{source}: not an ONNX model (no IR version or no graph); is it truncated?")
    problem = _structure_problem(model, measured)
    if problem:
        raise type(problem)(f"{source}: {problem}")
    return model, measured


# ModelProto.graph, GraphProto.initializer, and the TensorProto fields _raw_data_field reads.
_GRAPH_FIELD, _INITIALIZER_FIELD, _RAW_DATA_FIELD = 7, 5, 9
_OTHER_DATA_FIELDS = {3, 4, 5, 6, 7, 10, 11, 13, 14}  # segment, typed data, external data, data location
# Fields are parsed in runs of about this many bytes; then the pages of the file they came from are released.
_PIECE_BYTES = 1 << 20
# Initializers from this size on are parsed one by one and their raw data measured on the wire.
_MEASURED_BYTES = 4096
# Element types whose raw data numpy_helper.to_array reads as itemsize bytes per element.
_RAW_ITEMSIZE = {getattr(onnx.TensorProto, name): size for name, size in (
    ("FLOAT", 4), ("UINT8", 1), ("INT8", 1), ("UINT16", 2), ("INT16", 2), ("INT32", 4), ("INT64", 8), ("BOOL", 1),
    ("FLOAT16", 2), ("DOUBLE", 8), ("UINT32", 4), ("UINT64", 8), ("BFLOAT16", 2))}


def _fields(data, start: int, end: int) -> Iterator[Tuple[int, int, int, int, int]]:
    """(number, wire type, start, payload start, end) of each protobuf field encoded in data[start:end]."""
    position = start
    while position < end:
        field_start = position
        key, position = _varint(data, position)
        wire_type = key & 7
        payload = position
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 2:
            length, payload = _varint(data, position)
            position = payload + length
        elif wire_type == 5:
            position += 4
        else:
            raise DecodeError(f"wire type {wire_type}")
        if position > end:
            raise DecodeError("field runs past the end of its message")
        yield key >> 3, wire_type, field_start, payload, position


def _parse_pieces(data, held=None) -> Tuple[onnx.ModelProto, List[onnx.TensorProto]]:
    """Parse a serialized model field by field, as protobuf does (merging each field in order), so the source
    buffer's pages can be released as soon as they are parsed: a memory-mapped file then never sits in memory beside
    the whole parsed model. Return the model and the initializers whose raw data the wire shows to be exactly what
    their dims and type need, the check numpy_helper.to_array would make by copying it. With `held`, the data of
    those stays in the file (see _parse_initializer)."""
    view = memoryview(data)
    model = onnx.ModelProto()
    measured = []
    pending = []  # (target message, start, end) of a run of fields not yet parsed

    def flush() -> None:
        if pending:
            target, start, end = pending[0][0], pending[0][1], pending[-1][2]
            target.MergeFromString(view[start:end])
            _release(data, start, end)
            pending.clear()

    def add(target, start: int, end: int) -> None:
        if pending and (pending[0][0] is not target or pending[-1][2] != start or
                        end - pending[0][1] > _PIECE_BYTES):
            flush()
        pending.append((target, start, end))

    try:
        for number, wire_type, start, payload, end in _fields(view, 0, len(view)):
            if number != _GRAPH_FIELD or wire_type != 2:
                add(model, start, end)
                continue
            flush()
            graph = model.graph
            graph.SetInParent()
            for inner, inner_wire_type, inner_start, inner_payload, inner_end in _fields(view, payload, end):
                if inner != _INITIALIZER_FIELD or inner_wire_type != 2 or inner_end - inner_start < _MEASURED_BYTES:
                    add(graph, inner_start, inner_end)
                    continue
                flush()
                tensor = graph.initializer.add()
                if _parse_initializer(tensor, view, inner_payload, inner_end, held):
                    measured.append(tensor)
                _release(data, inner_start, inner_end)
            flush()
        flush()
    finally:
        view.release()  # a memory map cannot close while a view of it lives (a traceback would keep this one)
    return model, measured


def _parse_initializer(tensor: onnx.TensorProto, view, start: int, end: int, held) -> bool:
    """Parse the initializer encoded in view[start:end] into `tensor`; return whether its raw data is exactly what
    its dims and type need. With `held` (a bnfold.held.HeldTensors), such a tensor of a holdable type is parsed
    without its raw data, which stays in the file as a held range."""
    raw = _raw_data_field(view, start, end)
    if raw is None:
        tensor.MergeFromString(view[start:end])
        return False
    field_start, payload, field_end = raw
    if held is None:
        tensor.MergeFromString(view[start:end])
        return _raw_data_matches(tensor, field_end - payload)
    tensor.MergeFromString(view[start:field_start])  # the other fields: raw_data is the only one of its number
    tensor.MergeFromString(view[field_end:end])
    if not _raw_data_matches(tensor, field_end - payload):
        tensor.MergeFromString(view[field_start:field_end])
        return False
    if tensor.data_type in HOLDABLE_TYPES:
        held.hold_range(tensor, payload, field_end - payload)
    else:
        tensor.MergeFromString(view[field_start:field_end])
    return True


def _raw_data_field(data, start: int, end: int) -> Optional[Tuple[int, int, int]]:
    """(start, payload start, end) of the tensor's raw_data field when that is its only data (no typed, segment or
    external data) and it appears once, else None."""
    found = None
    for number, wire_type, field_start, payload, field_end in _fields(data, start, end):
        if number in _OTHER_DATA_FIELDS:
            return None
        if number == _RAW_DATA_FIELD:
            if found is not None or wire_type != 2:
                return None
            found = (field_start, payload, field_end)
    return found


def _raw_data_matches(tensor: onnx.TensorProto, length: Optional[int]) -> bool:
    itemsize = _RAW_ITEMSIZE.get(tensor.data_type)
    if length is None or itemsize is None or any(dim < 0 for dim in tensor.dims):
        return False
    elements = 1
    for dim in tensor.dims:
        elements *= dim
    return elements * itemsize == length


def _release(data, start: int, end: int) -> None:
    """Drop a memory map's pages in [start, end) from this process's memory (they stay in the page cache)."""
    if isinstance(data, mmap.mmap):
        first = start - start % mmap.PAGESIZE
        if end - first >= mmap.PAGESIZE:
            data.madvise(mmap.MADV_DONTNEED, first, end - first)


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
    if any(is_external(tensor) for tensor in iter_tensors(model)):
        _check_external_data(model, path.parent)


def _message_types_holding_tensors() -> frozenset:
    """Full names of the message types that are, or can contain, a TensorProto."""
    types, pending = {}, [onnx.ModelProto.DESCRIPTOR]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name not in types:
            types[descriptor.full_name] = descriptor
            pending.extend(field.message_type for field in descriptor.fields if field.message_type is not None)
    holders = {onnx.TensorProto.DESCRIPTOR.full_name}
    while True:
        grown = holders | {name for name, descriptor in types.items()
                           if any(field.message_type is not None and field.message_type.full_name in holders
                                  for field in descriptor.fields)}
        if grown == holders:
            return frozenset(holders)
        holders = grown


_TENSOR_HOLDERS = _message_types_holding_tensors()
# An external-data location starting with '#' names in-memory data: the checker does not look for such a file.
_SKELETON_LOCATION = "#bnfold-skeleton"


def _stand_in(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The tensor with every field but its raw data (or where its external data lives), marked as stored
    elsewhere."""
    stand_in = onnx.TensorProto()
    for field in tensor.DESCRIPTOR.fields:
        if field.name in ("raw_data", "external_data"):
            continue
        if _is_repeated(field):
            getattr(stand_in, field.name).extend(getattr(tensor, field.name))
        elif tensor.HasField(field.name):
            setattr(stand_in, field.name, getattr(tensor, field.name))
    stand_in.data_location = onnx.TensorProto.EXTERNAL
    entry = stand_in.external_data.add()
    entry.key, entry.value = "location", _SKELETON_LOCATION
    return stand_in


def _checker_skeleton(message, stand_ins: set):
    """A copy of `message` in which the tensors whose ids are in `stand_ins` are replaced by their _stand_in."""
    if isinstance(message, onnx.TensorProto):
        return _stand_in(message) if id(message) in stand_ins else message
    copy = type(message)()
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.full_name in _TENSOR_HOLDERS:
            if _is_repeated(field):
                getattr(copy, field.name).extend(_checker_skeleton(element, stand_ins) for element in value)
            else:
                getattr(copy, field.name).CopyFrom(_checker_skeleton(value, stand_ins))
        else:
            set_field(copy, field, value)
    return copy


def _check_skeleton(model: onnx.ModelProto, measured: Sequence[onnx.TensorProto]) -> None:
    """check_model's verdict on a model whose `measured` tensors hold exactly the raw data their dims and type
    need: for such a tensor the checker finds nothing to refuse but the dims and type themselves, which the stand-in
    keeps. The checker then neither serializes nor re-parses the weights. Nodes out of topological order are
    sorted in the skeleton (fold() sorts the model itself and reports it); a cycle is refused here."""
    from .graph.order import sort_nodes

    skeleton = _checker_skeleton(model, {id(tensor) for tensor in measured})
    sort_nodes(skeleton)
    check_model(skeleton)


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
                from .saving import save_model

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
