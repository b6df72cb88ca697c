"""Large tensors' bytes held beside a ModelProto instead of inside it, while a model file is folded.

Parsed into the proto, every weight is copied into protobuf's arena, and once a fold rewrites it the old bytes stay
there beside the new ones (upb frees nothing until the whole model goes): the model twice over, and two copies of
each weight a fold touches. Held instead, a large initializer is a stand-in tensor (its name, dims, type and other
fields, marked as external data at location HELD_LOCATION with a key of an open HeldTensors), and its bytes are
either a range of the source file, read only when a fold asks (os.preadv, straight into the array), or the array
a fold computed (until a background save has written it: then the range of the output where it lies). Saving copies unchanged ranges file to file (saving.FileRange, copy_file_range) and writes new
arrays as they lie in memory; ONNX Runtime sessions read ranges from the file themselves and take new arrays as
OrtValues (runtime._weightless).

A HeldTensors is a context: its stand-ins resolve only while it is open. Only fold_file holds tensors; models a
caller receives (bnfold.fold, load_model) always hold their bytes themselves.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
from typing import Dict, Iterator, Optional, Tuple, Union

import numpy as np
import onnx

from .errors import BnfoldError

# An external-data location starting with '#' names in-memory data: onnx.checker does not look for such a file.
HELD_LOCATION = "#bnfold-held"
_KEY = "bnfold-held"
# Element types whose raw data is numpy's little-endian layout of the same dtype, element for element.
HOLDABLE_TYPES = {getattr(onnx.TensorProto, name): np.dtype(dtype).newbyteorder("<") for name, dtype in (
    ("FLOAT", "float32"), ("DOUBLE", "float64"), ("FLOAT16", "float16"), ("INT8", "int8"), ("UINT8", "uint8"),
    ("INT16", "int16"), ("UINT16", "uint16"), ("INT32", "int32"), ("UINT32", "uint32"), ("INT64", "int64"),
    ("UINT64", "uint64"), ("BOOL", "bool"))}

_open: Dict[int, "HeldTensors"] = {}
_serial = itertools.count(1)


class HeldTensors:
    """The held bytes of one model file's large initializers: file ranges, or arrays once a fold replaced them."""

    def __init__(self, source: Union[str, "os.PathLike[str]"]):
        self.source = os.fspath(source)
        self._fd: Optional[int] = None
        self._entries: Dict[int, Union[Tuple[int, int, int], np.ndarray]] = {}  # (fd, offset, length) or array
        self._paths: Dict[int, str] = {}  # fd -> the file it reads: the source, and files a save wrote
        self._next = itertools.count()
        self.id = next(_serial)

    def __enter__(self) -> "HeldTensors":
        # The file stays open, so a rename over it (--overwrite) leaves the ranges readable. O_NONBLOCK: opening a
        # FIFO must not wait for a writer (only regular files are held; nothing else is read through this fd).
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(self.source, flags)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", self.source)
        self._fd = fd
        self._paths[fd] = self.source
        _open[self.id] = self
        return self

    def __exit__(self, *exc) -> None:
        _open.pop(self.id, None)
        self._entries.clear()
        for fd in self._paths:
            os.close(fd)
        self._paths.clear()
        self._fd = None

    def hold_range(self, tensor: onnx.TensorProto, offset: int, length: int) -> None:
        """Mark `tensor` (parsed without its raw_data) as held: its bytes are source[offset:offset + length]."""
        self._mark(tensor, (self._fd, offset, length))

    def moved_to_file(self, number: int, path: str, offset: int) -> None:
        """A save has written the array held as entry `number` (see held_key) to path[offset:]: read it from there
        from now on, and let the array go (the end-to-end check then runs without a copy of the folded weights in
        memory)."""
        array = self._entries.get(number)
        if not isinstance(array, np.ndarray):
            return
        fd = next((fd for fd, known in self._paths.items() if known == path), None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
            self._paths[fd] = path
        self._entries[number] = (fd, offset, array.nbytes)

    def hold_array(self, tensor: onnx.TensorProto, array: np.ndarray) -> None:
        """Make `tensor` hold `array` (replacing its data, dims and type): an in-place rewrite by a fold."""
        dtype = np.dtype(array.dtype)
        data_type = onnx.helper.np_dtype_to_tensor_dtype(dtype)
        array = np.asarray(array, dtype=dtype.newbyteorder("<"), order="C")  # keeps 0-d arrays 0-d
        array.flags.writeable = False
        clear_data(tensor)
        tensor.data_type = data_type
        tensor.dims.extend(array.shape)
        self._mark(tensor, array)

    def _mark(self, tensor: onnx.TensorProto, entry) -> None:
        number = next(self._next)
        self._entries[number] = entry
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", HELD_LOCATION), (_KEY, f"{self.id}:{number}")):
            item = tensor.external_data.add()
            item.key, item.value = key, value

    def entry(self, number: int):
        return self._entries[number]

    def path(self, fd: int) -> str:
        return self._paths[fd]

    def read(self, fd: int, offset: int, length: int, dtype: np.dtype) -> np.ndarray:
        """file[offset:offset + length] as a new flat array, read straight into it."""
        array = np.empty(length // dtype.itemsize, dtype)
        view = memoryview(array).cast("B")
        done = 0
        while done < length:
            if hasattr(os, "preadv"):
                count = os.preadv(fd, [view[done:]], offset + done)
            else:  # macOS before Python 3.12, Windows: through a bytes object
                block = read_at(fd, length - done, offset + done)
                view[done:done + len(block)] = block
                count = len(block)
            if count <= 0:
                raise BnfoldError(f"{self._paths[fd]}: the file shrank while it was being folded")
            done += count
        return array


@contextlib.contextmanager
def holding(path) -> Iterator[Optional[HeldTensors]]:
    """An open HeldTensors for a model file, closed on leaving; None when the path is no readable regular file
    (loading it then says why, in its own words). A pipe or FIFO is not even opened: opening it would take the
    writer's data away from the load that reads it next."""
    try:
        store = HeldTensors(path).__enter__() if stat.S_ISREG(os.stat(path).st_mode) else None
    except (OSError, ValueError):
        store = None
    try:
        yield store
    finally:
        if store is not None:
            store.__exit__(None, None, None)


def clear_data(tensor: onnx.TensorProto) -> None:
    """Remove the tensor's data, dims and where it lives, keeping its name, type and other fields (doc string,
    metadata): what a fold rewriting the tensor in place replaces."""
    for name in ("dims", "raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data", "segment", "external_data", "data_location"):
        tensor.ClearField(name)


def read_at(fd: int, length: int, offset: int) -> bytes:
    """Up to `length` bytes of an open file from `offset` (os.pread where it exists)."""
    if hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, length)


def is_held(tensor: onnx.TensorProto) -> bool:
    return (tensor.data_location == onnx.TensorProto.EXTERNAL and len(tensor.external_data) == 2
            and tensor.external_data[0].value == HELD_LOCATION and tensor.external_data[0].key == "location")


def _locate(tensor: onnx.TensorProto) -> Tuple["HeldTensors", object]:
    item = tensor.external_data[1]
    try:
        store_id, number = (int(part) for part in item.value.split(":"))
        store = _open[store_id]
        return store, store.entry(number)
    except (KeyError, ValueError):
        raise BnfoldError(f"tensor {tensor.name!r} refers to held data that is gone (its fold_file call has ended)") \
            from None


def held_by(tensor: onnx.TensorProto) -> "HeldTensors":
    """The open HeldTensors that holds the tensor's bytes."""
    return _locate(tensor)[0]


def held_key(tensor: onnx.TensorProto) -> Tuple["HeldTensors", int]:
    """(store, entry number) of a held tensor: where its bytes are, independent of the proto. A save that rewrites
    a copy of the tensor (its external data moved to a data file) still knows, through it, whose bytes it wrote."""
    store, _ = _locate(tensor)
    return store, int(tensor.external_data[1].value.split(":")[1])


def held_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's value: read from the source file (a new array each time) or the array a fold put there."""
    store, entry = _locate(tensor)
    if isinstance(entry, np.ndarray):
        return entry
    fd, offset, length = entry
    dtype = HOLDABLE_TYPES[tensor.data_type]
    return store.read(fd, offset, length, dtype).astype(dtype.newbyteorder("="), copy=False).reshape(
        tuple(tensor.dims))


def held_range(tensor: onnx.TensorProto) -> Optional[Tuple[str, int, int]]:
    """(file, offset, length) of a tensor held as a range of a file (the source, or where a save wrote a folded
    weight); None for one held as an array."""
    store, entry = _locate(tensor)
    return None if isinstance(entry, np.ndarray) else (store.path(entry[0]), entry[1], entry[2])


def held_nbytes(tensor: onnx.TensorProto) -> int:
    _, entry = _locate(tensor)
    return entry.nbytes if isinstance(entry, np.ndarray) else entry[2]


def held_data(tensor: onnx.TensorProto):
    """What saving writes as the tensor's raw data: (fd, offset, length) of a file range, or the array's bytes."""
    _, entry = _locate(tensor)
    if isinstance(entry, np.ndarray):
        return memoryview(entry.reshape(-1)).cast("B") if entry.size else b""
    return entry


def materialized(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of a held tensor that holds its bytes itself (raw_data), as if it had been parsed whole."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.ClearField("external_data")
    copy.ClearField("data_location")
    copy.raw_data = held_array(tensor).astype(HOLDABLE_TYPES[tensor.data_type], copy=False).tobytes()
    return copy
