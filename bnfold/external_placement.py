"""Placing a model's large tensors in an external data file: their bytes leave the proto, page-aligned in the
data file as onnx lays them out (so runtimes can mmap), and the tensors point at them.
"""

from __future__ import annotations

from typing import Optional

import onnx
from .serializing import held_chunk
from . import tensor_store
from .tensor_store import is_external, store_of
from .tensors import iter_tensors

# Tensors at least this large move to the external data file when external data is written.
EXTERNAL_DATA_MIN_BYTES = 1024


def externalize(model: onnx.ModelProto, data_name: str) -> Optional[list]:
    """Move large tensors' bytes out of `model`; return the byte chunks of the data file, or None if none moved."""
    chunks = []
    offset = 0
    for tensor in iter_tensors(model):
        if is_external(tensor):
            continue
        store = store_of(tensor)
        if store is not None:
            raw = held_chunk(store, tensor)
        else:
            if not tensor.HasField("raw_data"):
                if tensor.ByteSize() < EXTERNAL_DATA_MIN_BYTES:
                    continue
                # Typed fields (float_data, ...) move to raw_data first so their bytes can leave the proto.
                tensor_store.replace(tensor, tensor_store.value(tensor))
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
