"""Where a tensor's bytes are, and the one module that reads or rewrites them.

A tensor's value lives in its proto (raw_data or the typed fields), or, while a model file is folded, in a
TensorStore. Parsed into the proto, every weight is copied into protobuf's arena, and once a fold rewrites it the
old bytes stay there beside the new ones (upb frees nothing until the whole model goes): the model twice over, and
two copies of each weight a fold touches. Held in a store instead, a large initializer is a stand-in tensor (its
name, dims, type and other fields, marked as external data at HELD_LOCATION with the key of an open store), and its
bytes are either a range of the source file, read only when asked (os.preadv, straight into the array), or the
array a fold computed (until a background save has written it: then the range of the output where it lies).

Everyone reads a tensor with value() and gives it a new value with replace(), whoever holds it; nothing else here
is for code that folds or checks. Loading puts tensors in a store (holding, TensorStore.hold_range); saving writes
them from where they are (store_of, TensorStore.raw_bytes, key, moved_to_file; in_proto); the runtime hands them to
ONNX Runtime (file_range, in_proto). A store is a context: its stand-ins resolve only while it is open.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import stat
from typing import Dict, Iterator, Optional, Tuple, Union

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import BnfoldError

# An external-data location starting with '#' names in-memory data: onnx.checker does not look for such a file.
HELD_LOCATION = "#bnfold-held"
_KEY = "bnfold-held"
# Element types whose raw data is numpy's little-endian layout of the same dtype, element for element.
HOLDABLE_TYPES = {getattr(onnx.TensorProto, name): np.dtype(dtype).newbyteorder("<") for name, dtype in (
    ("FLOAT", "float32"), ("DOUBLE", "float64"), ("FLOAT16", "float16"), ("INT8", "int8"), ("UINT8", "uint8"),
    ("INT16", "int16"), ("UINT16", "uint16"), ("INT32", "int32"), ("UINT32", "uint32"), ("INT64", "int64"),
    ("UINT64", "uint64"), ("BOOL", "bool"))}
_HOLDABLE_DTYPES = {dtype.newbyteorder("=") for dtype in HOLDABLE_TYPES.values()}

_open: Dict[int, "TensorStore"] = {}
_serial = itertools.count(1)

# (fd, offset, length) of a file range, or an array a fold computed.
Entry = Union[Tuple[int, int, int], np.ndarray]


# --- for everyone ----------------------------------------------------------------------------------------------


def value(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's value, wherever it is kept: its proto, or a store (a new array read from the file each time, or
    the array a fold put there)."""
    store = store_of(tensor)
    return numpy_helper.to_array(tensor) if store is None else store.value(tensor)


def same_value(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    """Whether two tensors hold the same values, of the same type and dims (NaN equal to NaN). Two held tensors
    that are the same bytes of the same file are, without reading them; equal bytes are, without comparing
    element by element (numpy's array_equal with NaNs takes seconds on a large weight)."""
    if a.data_type != b.data_type or list(a.dims) != list(b.dims):
        return False
    place = _place(a)
    if place is not None and place == _place(b):
        return True
    if a.HasField("raw_data") and b.HasField("raw_data"):
        return a.raw_data == b.raw_data
    first, second = value(a), value(b)
    return _same_bits(first, second) or bool(np.array_equal(first, second, equal_nan=True))


def replace(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    """Give the tensor a new value (data, dims and type), keeping its name and other fields (doc string, metadata).
    A held tensor keeps the array in its store until it is saved."""
    store = store_of(tensor)
    if store is not None and np.dtype(array.dtype) in _HOLDABLE_DTYPES:
        store.replace(tensor, array)
    else:
        _clear_data(tensor)
        tensor.MergeFrom(numpy_helper.from_array(array, tensor.name))


def is_external(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor's data is in a file beside the model, not loaded (a held tensor is not: its store reads
    it)."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL and not is_held(tensor)


# --- for loading, saving and the runtime ----------------------------------------------------------------------


class TensorStore:
    """The held bytes of one model file's large initializers: file ranges, or arrays once a fold replaced them."""

    def __init__(self, source: Union[str, "os.PathLike[str]"]):
        self.source = os.fspath(source)
        self._fd: Optional[int] = None
        self._entries: Dict[int, Entry] = {}
        self._paths: Dict[int, str] = {}  # fd -> the file it reads: the source, and files a save wrote
        self._next = itertools.count()
        self.id = next(_serial)

    def __enter__(self) -> "TensorStore":
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

    def value(self, tensor: onnx.TensorProto) -> np.ndarray:
        entry = self._entry(tensor)
        if isinstance(entry, np.ndarray):
            return entry
        fd, offset, length = entry
        dtype = HOLDABLE_TYPES[tensor.data_type]
        return self.read(fd, offset, length, dtype).astype(dtype.newbyteorder("="), copy=False).reshape(
            tuple(tensor.dims))

    def replace(self, tensor: onnx.TensorProto, array: np.ndarray) -> None:
        """Make `tensor` hold `array` (replacing its data, dims and type): an in-place rewrite by a fold."""
        dtype = np.dtype(array.dtype)
        data_type = onnx.helper.np_dtype_to_tensor_dtype(dtype)
        array = np.asarray(array, dtype=dtype.newbyteorder("<"), order="C")  # keeps 0-d arrays 0-d
        array.flags.writeable = False
        _clear_data(tensor)
        tensor.data_type = data_type
        tensor.dims.extend(array.shape)
        self._mark(tensor, array)

    def raw_bytes(self, tensor: onnx.TensorProto) -> Union[Tuple[int, int, int], memoryview, bytes]:
        """What saving writes as the tensor's raw data: (fd, offset, length) of a file range, or the array's
        bytes."""
        entry = self._entry(tensor)
        if isinstance(entry, np.ndarray):
            return memoryview(entry.reshape(-1)).cast("B") if entry.size else b""
        return entry

    def file_range(self, tensor: onnx.TensorProto) -> Optional[Tuple[str, int, int]]:
        """(file, offset, length) of a tensor held as a range of a file (the source, or where a save wrote a folded
        weight); None for one held as an array."""
        entry = self._entry(tensor)
        return None if isinstance(entry, np.ndarray) else (self._paths[entry[0]], entry[1], entry[2])

    def place(self, tensor: onnx.TensorProto) -> Optional[Tuple[int, int, int, int]]:
        """(device, inode, offset, length) of a tensor held as a range of a file, which two stores open on the same
        file (by any path) agree on; None for one held as an array."""
        entry = self._entry(tensor)
        if isinstance(entry, np.ndarray):
            return None
        status = os.fstat(entry[0])
        return status.st_dev, status.st_ino, entry[1], entry[2]

    def mapped(self, tensor: onnx.TensorProto) -> Optional[np.ndarray]:
        """A read-only view of a tensor held as a file range, mapped from the file (its pages read only where
        touched, and shared with every other mapping of them); None for one held as an array, or whose offset is
        not a multiple of its element size (a misaligned array some kernels cannot read)."""
        entry = self._entry(tensor)
        if isinstance(entry, np.ndarray):
            return None
        fd, offset, length = entry
        dtype = HOLDABLE_TYPES[tensor.data_type]
        if offset % dtype.itemsize or not length:
            return None
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(fd, offset + length - start, offset=start, access=mmap.ACCESS_READ)
        array = np.frombuffer(mapping, dtype, count=length // dtype.itemsize, offset=offset - start)
        return array.astype(dtype.newbyteorder("="), copy=False).reshape(tuple(tensor.dims))

    def nbytes(self, tensor: onnx.TensorProto) -> int:
        entry = self._entry(tensor)
        return entry.nbytes if isinstance(entry, np.ndarray) else entry[2]

    def key(self, tensor: onnx.TensorProto) -> Tuple["TensorStore", int]:
        """(store, entry number): where the tensor's bytes are, independent of the proto. A save that rewrites a
        copy of the tensor (its external data moved to a data file) still knows, through it, whose bytes it
        wrote."""
        return self, _number(tensor)

    def moved_to_file(self, number: int, path: str, offset: int) -> None:
        """A save has written the array held as entry `number` (see key) to path[offset:]: read it from there from
        now on, and let the array go (the end-to-end check then runs without a copy of the folded weights in
        memory)."""
        array = self._entries.get(number)
        if not isinstance(array, np.ndarray):
            return
        fd = next((fd for fd, known in self._paths.items() if known == path), None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
            self._paths[fd] = path
        self._entries[number] = (fd, offset, array.nbytes)

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

    def _mark(self, tensor: onnx.TensorProto, entry: Entry) -> None:
        number = next(self._next)
        self._entries[number] = entry
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", HELD_LOCATION), (_KEY, f"{self.id}:{number}")):
            item = tensor.external_data.add()
            item.key, item.value = key, value

    def _entry(self, tensor: onnx.TensorProto) -> Entry:
        try:
            return self._entries[_number(tensor)]
        except KeyError:
            raise _gone(tensor) from None


@contextlib.contextmanager
def holding(path) -> Iterator[Optional[TensorStore]]:
    """An open TensorStore for a model file, closed on leaving; None when the path is no readable regular file
    (loading it then says why, in its own words). A pipe or FIFO is not even opened: opening it would take the
    writer's data away from the load that reads it next."""
    try:
        store = TensorStore(path).__enter__() if stat.S_ISREG(os.stat(path).st_mode) else None
    except (OSError, ValueError):
        store = None
    try:
        yield store
    finally:
        if store is not None:
            store.__exit__(None, None, None)


def is_held(tensor: onnx.TensorProto) -> bool:
    return (tensor.data_location == onnx.TensorProto.EXTERNAL and len(tensor.external_data) == 2
            and tensor.external_data[0].value == HELD_LOCATION and tensor.external_data[0].key == "location")


def store_of(tensor: onnx.TensorProto) -> Optional[TensorStore]:
    """The open store that holds the tensor's bytes; None for a tensor whose proto holds them (or names a file)."""
    if not is_held(tensor):
        return None
    try:
        return _open[int(tensor.external_data[1].value.split(":")[0])]
    except (KeyError, ValueError):
        raise _gone(tensor) from None


def in_proto(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The tensor with its bytes in its proto: itself, or for a held one a copy holding them in raw_data, as if it
    had been parsed whole."""
    store = store_of(tensor)
    if store is None:
        return tensor
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.ClearField("external_data")
    copy.ClearField("data_location")
    copy.raw_data = store.value(tensor).astype(HOLDABLE_TYPES[tensor.data_type], copy=False).tobytes()
    return copy


def _same_bits(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two arrays of one numeric dtype hold the same bits, compared as unsigned integers of its size."""
    dtype = first.dtype
    if dtype != second.dtype or first.shape != second.shape or dtype.kind not in "biuf" or \
            dtype.itemsize not in (1, 2, 4, 8):
        return False
    bits = np.dtype(f"u{dtype.itemsize}")
    return bool(np.array_equal(np.ascontiguousarray(first).view(bits), np.ascontiguousarray(second).view(bits)))


def _place(tensor: onnx.TensorProto) -> Optional[Tuple[int, int, int, int]]:
    """(device, inode, offset, length) of a tensor held as a range of a file; None for any other."""
    store = store_of(tensor)
    return None if store is None else store.place(tensor)


def read_at(fd: int, length: int, offset: int) -> bytes:
    """Up to `length` bytes of an open file from `offset` (os.pread where it exists)."""
    if hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, length)


def _number(tensor: onnx.TensorProto) -> int:
    try:
        return int(tensor.external_data[1].value.split(":")[1])
    except (IndexError, ValueError):
        raise _gone(tensor) from None


def _gone(tensor: onnx.TensorProto) -> BnfoldError:
    return BnfoldError(f"tensor {tensor.name!r} refers to held data that is gone (its fold_file call has ended)")


def _clear_data(tensor: onnx.TensorProto) -> None:
    """Remove the tensor's data, dims and where it lives, keeping its name, type and other fields."""
    for name in ("dims", "raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data", "segment", "external_data", "data_location"):
        tensor.ClearField(name)
