"""A model's tensors and how many bytes they hold, counted without reading them: shared by loading, saving and
folding (a tensor's value is bnfold.tensor_store's to read)."""

from __future__ import annotations

from typing import Iterator

import onnx
from onnx import helper

from .tensor_store import is_external

# Protobuf cannot serialize a message of 2 GiB or more; above this, weights go to an external file.
PROTOBUF_LIMIT = 2**31 - 1


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


def external_info(tensor: onnx.TensorProto) -> dict:
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
        if tensor.data_type == onnx.TensorProto.STRING or is_external(tensor):
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

