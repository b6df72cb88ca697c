"""Serializing a model as a stream of chunks (bnfold.atomic_write), byte for byte what SerializeToString() gives,
without a second copy of the weights: the graph's nodes and initializers one at a time, a large initializer as its
other fields around its raw data (read only when written), and a held tensor (see bnfold.tensor_store) from where it is: a
range of the source file or the array it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import onnx
from onnx import helper
from google.protobuf import unknown_fields
from google.protobuf.message import EncodeError

from .atomic_write import FileRange, HeldBytes, TensorData
from .errors import OutputError
from .tensor_store import TensorStore, in_proto, is_held, store_of
from .tensors import exceeds_protobuf_limit, tensor_bytes
from .wire import is_repeated, single_field, varint_bytes

# Element types stored several to a byte: numpy's itemsize does not give their size.
_PACKED_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2",
                                                              "FLOAT6E2M3", "FLOAT6E3M2")
                 if hasattr(onnx.TensorProto, name)}


def serialize(model: onnx.ModelProto, path: Path, predict: bool = True) -> Iterator[bytes]:
    """model.SerializeToString(), byte for byte, in pieces: the graph's nodes and initializers one at a time, so
    saving never holds a second copy of the weights (one serialized string would be two: upb's and Python's).
    With `predict`, a large initializer's size is taken from its dims and type, as ByteSize() would encode the
    whole tensor to find out; a tensor that does not match raises SizeMismatch before its bytes are written."""
    if exceeds_protobuf_limit(model):
        raise OutputError(f"{path}: the model holds {tensor_bytes(model) / 2**30:.1f} GiB of tensors, above "
                          "protobuf's 2 GiB limit; write its weights as external data (--external-data)")
    try:
        if unknown_fields.UnknownFieldSet(model) or unknown_fields.UnknownFieldSet(model.graph):
            # Fields this onnx does not know: let protobuf keep them in place.
            yield _with_held_data(model).SerializeToString()
            return
        for field, value in model.ListFields():
            if field.name == "graph":
                yield from _graph_pieces(field.number, value, predict)
            else:
                yield single_field(onnx.ModelProto(), field, value)
    except (EncodeError, ValueError) as error:
        raise OutputError(f"{path}: the model cannot be serialized ({error})") from None


# GraphProto fields serialized element by element; everything else is small.
_STREAMED_GRAPH_FIELDS = ("node", "initializer")
# Initializers from this size on are written as their other fields around their raw data.
_SPLIT_TENSOR_BYTES = 4096
_RAW_DATA_NUMBER = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_OTHER_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
                      "external_data")
# Fields a tensor written with raw_data leaves out: raw_data itself, and where a held tensor's bytes are.
_NOT_AROUND_RAW_DATA = {_RAW_DATA_NUMBER, *(onnx.TensorProto.DESCRIPTOR.fields_by_name[name].number
                                            for name in ("external_data", "data_location"))}


def _split_tensor(tensor: onnx.TensorProto) -> Optional[Tuple[bytes, int, bytes]]:
    """(encoded fields before raw_data with raw_data's tag and length, its predicted length, encoded fields after
    it) for a large tensor whose only data is raw_data, or a held one (see bnfold.tensor_store), else None. Protobuf encodes
    fields in number order, so these pieces around the raw bytes are the tensor's own encoding, without a copy of
    the tensor to find its size."""
    store = store_of(tensor)
    if store is not None:
        return _around_raw_data(tensor, store.nbytes(tensor))
    if tensor.data_type == onnx.TensorProto.STRING or not tensor.HasField("raw_data") or \
            tensor.HasField("segment") or tensor.HasField("data_location") or \
            any(len(getattr(tensor, name)) for name in _OTHER_DATA_FIELDS) or \
            any(dim < 0 for dim in tensor.dims) or unknown_fields.UnknownFieldSet(tensor):
        return None
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except KeyError:
        return None
    if tensor.data_type in _PACKED_TYPES:
        return None
    length = itemsize
    for dim in tensor.dims:
        length *= dim
    if length < _SPLIT_TENSOR_BYTES:
        return None
    return _around_raw_data(tensor, length)


def _around_raw_data(tensor: onnx.TensorProto, length: int) -> Tuple[bytes, int, bytes]:
    before, after = onnx.TensorProto(), onnx.TensorProto()
    for field in tensor.DESCRIPTOR.fields:
        if field.number in _NOT_AROUND_RAW_DATA:
            continue
        target = before if field.number < _RAW_DATA_NUMBER else after
        if is_repeated(field):
            getattr(target, field.name).extend(getattr(tensor, field.name))
        elif not tensor.HasField(field.name):
            continue
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(getattr(tensor, field.name))
        else:
            setattr(target, field.name, getattr(tensor, field.name))
    head = before.SerializeToString() + varint_bytes(_RAW_DATA_NUMBER << 3 | 2) + varint_bytes(length)
    return head, length, after.SerializeToString()


def _graph_pieces(number: int, graph: onnx.GraphProto, predict: bool) -> Iterator[bytes]:
    """The graph as field `number` of its parent: tag, length, then its fields in field-number order."""
    plan, size = [], 0
    for field, value in graph.ListFields():
        if field.name in _STREAMED_GRAPH_FIELDS:
            for element in value:
                split = _split_tensor(element) if field.name == "initializer" and (predict or is_held(element)) \
                    else None
                length = len(split[0]) + split[1] + len(split[2]) if split else element.ByteSize()
                head = varint_bytes(field.number << 3 | 2) + varint_bytes(length)
                plan.append((head, element, split))
                size += len(head) + length
        else:
            encoded = single_field(onnx.GraphProto(), field, value)
            plan.append((encoded, None, None))
            size += len(encoded)
    yield varint_bytes(number << 3 | 2) + varint_bytes(size)
    for head, element, split in plan:
        yield head
        if split:
            yield split[0]
            store = store_of(element)
            yield held_chunk(store, element) if store is not None else TensorData(element, split[1])
            yield split[2]
        elif element is not None:
            yield element.SerializeToString()


def _with_held_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model, or a copy whose held initializers hold their bytes themselves."""
    if not any(is_held(tensor) for tensor in model.graph.initializer):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        whole = in_proto(tensor)
        if whole is not tensor:
            tensor.CopyFrom(whole)
    return copy


def held_chunk(store: TensorStore, tensor: onnx.TensorProto) -> Union[HeldBytes, FileRange]:
    """What a held tensor's bytes are written from: a range of a file, or the array a fold put in its store."""
    data = store.raw_bytes(tensor)
    return FileRange(*data) if isinstance(data, tuple) else HeldBytes(store.key(tensor), data)
