"""Whether a parsed model is well-formed: every string field UTF-8 (proto2 parsing accepts any bytes there) and
every tensor's data what its shape and type promise (a truncated or bit-flipped file often still parses). An
external tensor is checked for a known type and a file name here; its data once loaded (bnfold.external_data).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import onnx
from google.protobuf.descriptor import FieldDescriptor

from .errors import BnfoldError, ExternalDataError, ModelLoadError
from . import tensor_store
from .tensor_store import is_external
from .tensors import external_info
from .wire import is_repeated

# What reading a tensor (numpy_helper.to_array) raises for a tensor whose data does not match its shape and type.
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError, UnicodeDecodeError)


def externaltensor_problem(tensor: onnx.TensorProto) -> Optional[str]:
    """What can be checked of an external tensor before its data is read: a known type and a file name."""
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING) or \
            tensor.data_type not in onnx.TensorProto.DataType.values():
        return f"external tensor {tensor.name!r} has data type {tensor.data_type}, which cannot be stored externally"
    if not external_info(tensor).get("location"):
        return f"tensor {tensor.name!r} is marked external but names no file"
    return None


def tensor_problem(tensor: onnx.TensorProto) -> Optional[str]:
    """Why the tensor's data cannot be read as its declared shape and type, or None when it can."""
    if is_external(tensor):
        return externaltensor_problem(tensor)
    try:
        tensor_store.value(tensor)
    except _DECODE_ERRORS as error:
        dims = "x".join(str(d) for d in tensor.dims) or "scalar"
        type_name = onnx.TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in \
            onnx.TensorProto.DataType.values() else f"unknown type {tensor.data_type}"
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"tensor {tensor.name!r} ({type_name}, {dims}) does not hold valid data: {detail}"
    return None


def _string_fields(descriptor) -> List[Tuple[str, bool, bool]]:
    """(name, repeated, is_message) of the string and message fields of a message type: the only ones the walk
    reads, so tensors' bytes fields (raw_data) are never copied out of the proto."""
    return [
        (field.name, is_repeated(field), field.type == FieldDescriptor.TYPE_MESSAGE)
        for field in descriptor.fields
        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE)
    ]


def structure_problem(model: onnx.ModelProto, measured: Sequence[onnx.TensorProto] = ()) -> Optional[BnfoldError]:
    """The error for the first string field that is not UTF-8 (proto2 parsing accepts any bytes there) or tensor
    whose data does not match its shape and type (of an external tensor: its type and file name; its data is checked
    once loaded), or None for a well-formed model. `measured` tensors' data is known to match (see bnfold.parsing):
    they are not decoded again."""
    measured_ids = {id(tensor) for tensor in measured}
    fields_by_type = {}
    pending = [model]
    while pending:
        message = pending.pop()
        if isinstance(message, onnx.TensorProto) and id(message) not in measured_ids:
            problem = tensor_problem(message)
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
