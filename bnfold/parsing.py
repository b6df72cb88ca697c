"""Parsing a serialized model: field by field from a memory map, releasing the pages already parsed, and measuring
large initializers' raw data on the wire against their dims and type (the measured ones need no decode to be known
well-formed, and with a bnfold.tensor_store.TensorStore their bytes can stay in the file). Protobuf's own parse is the
fallback, for its verdict and its words.
"""

from __future__ import annotations

import mmap
from typing import List, Optional, Tuple

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError
from .tensor_store import HOLDABLE_TYPES
from .wellformed import structure_problem
from .wire import fields

def parse_model_bytes(data: bytes, *, source: str = "<bytes>") -> onnx.ModelProto:
    """Parse serialized bytes into a well-formed ModelProto, or raise ModelLoadError (ExternalDataError for an
    external tensor with no file name or a type that cannot be stored externally) saying why not.

    Beyond protobuf's own parsing: the model needs an IR version and a graph, every string must be UTF-8 and every
    tensor's data must match its shape and type (external tensors' data is checked by load_model once read).
    """
    return parse_checked(data, source)[0]


def parse_checked(data, source: str, held=None) -> Tuple[onnx.ModelProto, List[onnx.TensorProto]]:
    """The model in `data`, well-formedness checked, and the initializers whose data was measured (see
    _parse_pieces); ModelLoadError (or ExternalDataError) saying why not."""
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
    problem = structure_problem(model, measured)
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
        for number, wire_type, start, payload, end in fields(view, 0, len(view)):
            if number != _GRAPH_FIELD or wire_type != 2:
                add(model, start, end)
                continue
            flush()
            graph = model.graph
            graph.SetInParent()
            for inner, inner_wire_type, inner_start, inner_payload, inner_end in fields(view, payload, end):
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
    its dims and type need. With `held` (a bnfold.tensor_store.TensorStore), such a tensor of a holdable type is parsed
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
    for number, wire_type, field_start, payload, field_end in fields(data, start, end):
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
