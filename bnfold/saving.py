"""Saving ONNX models atomically: every file (model, and external data when asked) goes to a temporary file in the
target directory, is flushed and fsynced, and only then renamed over the target: a reader, or a run killed at any
moment, sees the old file or the complete new one. A failed write removes its temporary files and leaves the
targets untouched.

Where the output goes: a symlink is followed (the temporary file and the rename happen beside the file it points
to, so the link stays a link); an existing path that is not a regular file (directory, device node, FIFO, socket)
is refused and never replaced; `-` is refused (models are not streamed to stdout); a path ending in `/` names a
directory, which is refused here (the command line writes into such a directory under the input's own name). The
external data file follows the same rules.

PendingSave writes the temporary files in a background thread while the caller works on (fold_file's end-to-end
check), and renames them only when asked to commit.

Held tensors (see bnfold.held) are written from where they are: a range of the source file is copied file to file
(copy_file_range, else through a buffer), a new array straight from its memory; the bytes are those the tensor
would have serialized with its data inline.

Over 300 lines on purpose: the output-path rules, the atomic write and the streaming serializer are one job
(writing a model safely) and share their error handling.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import onnx
from onnx import helper, numpy_helper
from google.protobuf import unknown_fields
from google.protobuf.message import EncodeError

from .errors import ArgumentTypeError, OutputError
from .loading import _is_repeated, set_field
from .held import held_data, held_key, held_nbytes, is_held, materialized, read_at
from .tensors import exceeds_protobuf_limit, is_external, iter_tensors, tensor_bytes

PathLike = Union[str, "os.PathLike[str]"]

# Tensors at least this large move to the external data file when external data is written.
EXTERNAL_DATA_MIN_BYTES = 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Element types stored several to a byte: numpy's itemsize does not give their size.
_PACKED_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2",
                                                              "FLOAT6E2M3", "FLOAT6E3M2")
                 if hasattr(onnx.TensorProto, name)}


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


class TensorData:
    """A chunk to write that is a tensor's raw data, read from the proto only when written (so a list of chunks
    made ahead holds no copy of it), `length` bytes long or _SizeMismatch."""

    __slots__ = ("tensor", "length")

    def __init__(self, tensor: onnx.TensorProto, length: int):
        self.tensor, self.length = tensor, length

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        raw = self.tensor.raw_data
        if len(raw) != self.length:
            raise _SizeMismatch(self.tensor.name)
        return raw


class HeldBytes:
    """A chunk that is the array a held tensor holds (see bnfold.held); a writer asked to can say where it landed.
    `key` is the held entry's (store, number), taken when the chunk is made: the tensor itself may be rewritten
    afterwards (a copy moved to the external data file no longer says it is held)."""

    __slots__ = ("key", "view")

    def __init__(self, key, view):
        self.key, self.view = key, view

    def __len__(self) -> int:
        return len(self.view)


class FileRange:
    """A chunk to write that lies in another file: `length` bytes of open file `fd` from `offset` (held data)."""

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd: int, offset: int, length: int):
        self.fd, self.offset, self.length = fd, offset, length

    def __len__(self) -> int:
        return self.length


# Copied through user space in blocks of this size where the kernel cannot copy file to file.
_COPY_BLOCK = 1 << 24
# Chunks smaller than this are gathered into one write.
_GATHERED_BYTES = 1 << 20


def _copy_range(source: FileRange, fd: int) -> None:
    """Append a range of another file at fd's position: in the kernel (copy_file_range) where it can, else by
    blocks through a buffer."""
    offset, left = source.offset, source.length
    if hasattr(os, "copy_file_range"):
        try:
            while left:
                count = os.copy_file_range(source.fd, fd, min(left, 1 << 30), offset)
                if count <= 0:
                    break
                offset, left = offset + count, left - count
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
    while left:
        block = read_at(source.fd, min(left, _COPY_BLOCK), offset)
        if not block:
            raise OSError(errno.EIO, "the input file shrank while it was being copied")
        _write_all(fd, block)
        offset, left = offset + len(block), left - len(block)


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


Chunk = Union[bytes, memoryview, FileRange, TensorData, HeldBytes]
# (held key, file, offset): where a writer put the bytes of a HeldBytes chunk (key: bnfold.held.held_key).
Placed = List[Tuple[tuple, str, int]]


class _Cancelled(Exception):
    """A background save was discarded before it finished."""


def _write_temporary(path: Path, chunks: Iterable[Chunk], cancelled: Callable[[], bool] = lambda: False,
                     placed: Optional[Placed] = None) -> str:
    """Write chunks to a new temporary file beside `path`, flushed and fsynced; return its name. `placed` gets
    where each HeldBytes chunk landed."""
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(path, os.getpid()), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb", buffering=0):  # closes fd
            os.fchmod(fd, _new_file_mode(path))
            pending = bytearray()  # small chunks (nodes, tensor headers) go out together
            position = 0
            for chunk in chunks:
                if cancelled():
                    raise _Cancelled()
                if isinstance(chunk, TensorData):
                    chunk = chunk.read()
                elif isinstance(chunk, HeldBytes):
                    if placed is not None:
                        placed.append((chunk.key, tmp_name, position))
                    chunk = chunk.view
                position += len(chunk)
                if isinstance(chunk, FileRange) or len(chunk) >= _GATHERED_BYTES:
                    _write_all(fd, pending)
                    pending.clear()
                    if isinstance(chunk, FileRange):
                        _copy_range(chunk, fd)
                    else:
                        _write_all(fd, chunk)
                    continue
                pending += chunk
                if len(pending) >= _GATHERED_BYTES:
                    _write_all(fd, pending)
                    pending.clear()
            _write_all(fd, pending)
            os.fsync(fd)
    except BaseException:
        _remove_quietly(tmp_name)
        raise
    return tmp_name


def _temporary_prefix(path: Path, pid: int) -> str:
    """Temporary files are `.<name>.<pid>.<random>.tmp` beside their target: hidden, and known to be this
    process's, so whoever kills a process that was writing can remove what it left (remove_temporaries)."""
    return f".{path.name}.{pid}."


def remove_temporaries(path: PathLike, pid: int) -> None:
    """Remove the temporary files process `pid` left while writing `path` and its external data file (it was
    killed: bnfold.workers)."""
    import glob

    try:
        target = output_target(path)
        targets = [target, data_file_path(target)]
    except OutputError:
        return
    for file in targets:
        pattern = os.path.join(glob.escape(str(file.parent)), glob.escape(_temporary_prefix(file, pid)) + "*.tmp")
        for name in glob.glob(pattern):
            _remove_quietly(name)


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _write_files_atomically(files: Sequence[Tuple[Path, Iterable[Chunk]]]) -> None:
    """Write every file to a temporary one first and rename them over their targets in order only when all are
    complete: a failure (disk full, interrupt) before the renames leaves every target as it was and no temporary
    file behind. Put the file that refers to the others (the model) last."""
    _replace_all(_write_temporaries(files), files)


def _write_temporaries(files: Sequence[Tuple[Path, Iterable[Chunk]]], cancelled: Callable[[], bool] = lambda: False,
                       placed: Optional[Placed] = None) -> List[Tuple[str, Path]]:
    """The temporary files of _write_files_atomically, written; none left behind when one fails."""
    for path, _ in files:
        if not path.parent.is_dir():
            raise OutputError(f"{path}: output directory {path.parent} does not exist")
    written: List[Tuple[str, Path]] = []
    try:
        for path, chunks in files:
            try:
                written.append((_write_temporary(path, chunks, cancelled, placed), path))
            except OSError as error:
                raise _write_error(path, error) from None
    except BaseException:
        _remove_all(written)
        raise
    return written


def _remove_all(written: List[Tuple[str, Path]]) -> None:
    for tmp_name, _ in written:
        _remove_quietly(tmp_name)


def _replace_all(written: List[Tuple[str, Path]], files: Sequence[Tuple[Path, Iterable[Chunk]]]) -> None:
    """Rename the temporary files over their targets, in order; then make the renames durable."""
    try:
        while written:
            tmp_name, path = written[0]
            try:
                os.replace(tmp_name, path)
            except OSError as error:
                raise _write_error(path, error) from None
            written.pop(0)
    finally:
        _remove_all(written)
    for directory in {path.parent for path, _ in files}:
        _fsync_dir(directory)


def _externalize(model: onnx.ModelProto, data_name: str) -> Optional[list]:
    """Move large tensors' bytes out of `model`; return the byte chunks of the data file, or None if none moved."""
    chunks = []
    offset = 0
    for tensor in iter_tensors(model):
        if is_external(tensor):
            continue
        if is_held(tensor):
            raw = _held_chunk(tensor)
        else:
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


class _SizeMismatch(Exception):
    """A tensor's raw data is not the size its dims and type predict: serialize the slow, exact way instead."""


def _serialize(model: onnx.ModelProto, path: Path, predict: bool = True) -> Iterator[bytes]:
    """model.SerializeToString(), byte for byte, in pieces: the graph's nodes and initializers one at a time, so
    saving never holds a second copy of the weights (one serialized string would be two: upb's and Python's).
    With `predict`, a large initializer's size is taken from its dims and type, as ByteSize() would encode the
    whole tensor to find out; a tensor that does not match raises _SizeMismatch before its bytes are written."""
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
                yield _single_field(onnx.ModelProto(), field, value)
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
    it) for a large tensor whose only data is raw_data, or a held one (see bnfold.held), else None. Protobuf encodes
    fields in number order, so these pieces around the raw bytes are the tensor's own encoding, without a copy of
    the tensor to find its size."""
    if is_held(tensor):
        return _around_raw_data(tensor, held_nbytes(tensor))
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
        if _is_repeated(field):
            getattr(target, field.name).extend(getattr(tensor, field.name))
        elif not tensor.HasField(field.name):
            continue
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(getattr(tensor, field.name))
        else:
            setattr(target, field.name, getattr(tensor, field.name))
    head = before.SerializeToString() + _varint_bytes(_RAW_DATA_NUMBER << 3 | 2) + _varint_bytes(length)
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
                head = _varint_bytes(field.number << 3 | 2) + _varint_bytes(length)
                plan.append((head, element, split))
                size += len(head) + length
        else:
            encoded = _single_field(onnx.GraphProto(), field, value)
            plan.append((encoded, None, None))
            size += len(encoded)
    yield _varint_bytes(number << 3 | 2) + _varint_bytes(size)
    for head, element, split in plan:
        yield head
        if split:
            yield split[0]
            yield _held_chunk(element) if is_held(element) else TensorData(element, split[1])
            yield split[2]
        elif element is not None:
            yield element.SerializeToString()


def _with_held_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model, or a copy whose held initializers hold their bytes themselves."""
    if not any(is_held(tensor) for tensor in model.graph.initializer):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for position, tensor in enumerate(copy.graph.initializer):
        if is_held(tensor):
            copy.graph.initializer[position].CopyFrom(materialized(tensor))
    return copy


def _held_chunk(tensor: onnx.TensorProto) -> Union[HeldBytes, FileRange]:
    data = held_data(tensor)
    return FileRange(*data) if isinstance(data, tuple) else HeldBytes(held_key(tensor), data)


def _single_field(container, field, value) -> bytes:
    """One field of a message, encoded as the message would encode it."""
    set_field(container, field, value)
    return container.SerializeToString()


def _varint_bytes(value: int) -> bytes:
    encoded = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            encoded.append(low)
            return bytes(encoded)
        encoded.append(low | 0x80)


def output_target(path: PathLike) -> Path:
    """The file a write to `path` replaces: symlinks resolved; refused (OutputError) when it is `-`, names a
    directory (trailing `/` or an existing one), or exists and is not a regular file."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError("path", f"expected a str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise ArgumentTypeError("path", "expected a str path, got bytes")
    if text == "-":
        raise OutputError("-: bnfold does not write models to stdout; name an output file")
    if text.endswith(("/", os.sep)):
        if not os.path.isdir(text):
            raise OutputError(f"{text}: output directory does not exist")
        raise OutputError(f"{text}: is a directory; name the output file")
    try:
        target = Path(os.path.realpath(text))
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except (ValueError, OSError) as error:
        raise OutputError(f"{text}: not a usable output path ({error})") from None
    if stat.S_ISDIR(mode):
        raise OutputError(f"{text}: is a directory; name the output file")
    if not stat.S_ISREG(mode):
        shown = text if str(target) == text else f"{text} (-> {target})"
        raise OutputError(f"{shown}: is a {_file_kind(mode)}, not a regular file; bnfold never replaces it")
    return target


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def data_file_path(path: PathLike) -> Path:
    """The external data file a save to `path` writes: `<file name>.data` beside the file the path resolves to."""
    target = output_target(path)
    return output_target(target.parent / (target.name + ".data"))


def save_model(
    model: onnx.ModelProto,
    path: PathLike,
    *,
    external_data: Optional[bool] = None,
) -> None:
    """Save `model` to `path` atomically (see the module docstring for symlinks, special files, `-` and `dir/`).

    external_data: True writes tensors of 1 KiB or more to `<file name>.data` beside the model; None (default)
    does so only when the model would exceed protobuf's 2 GiB limit. `model` itself is not modified. The data file
    is renamed into place just before the model: only a kill between those two renames can pair a new data file
    with the old model, and only when the old model used the same data file name.
    """
    plan = _SavePlan(model, path, external_data)
    try:
        _write_files_atomically(plan.files(_serialize(plan.model, plan.path)))
    except _SizeMismatch:
        plan.write_exactly()


class _SavePlan:
    """What save_model writes: the target, the model as written (without its large tensors when they go to an
    external data file) and that file's chunks."""

    def __init__(self, model: onnx.ModelProto, path: PathLike, external_data: Optional[bool]):
        if not isinstance(model, onnx.ModelProto):
            raise ArgumentTypeError("model", f"expected an onnx.ModelProto, got {type(model).__name__}")
        self.path, self.model, self.data = output_target(path), model, []
        if external_data is None:
            external_data = exceeds_protobuf_limit(model)
        if external_data:
            data_name = self.path.name + ".data"
            data_path = data_file_path(self.path)
            self.model = onnx.ModelProto()
            self.model.CopyFrom(model)
            chunks = _externalize(self.model, data_name)
            self.data = [(data_path, chunks)] if chunks else []

    def files(self, model_chunks: Iterable[Chunk]) -> list:
        """The files to write, the model last: it refers to the data file."""
        return [*self.data, (self.path, model_chunks)]

    def write_exactly(self) -> None:
        """Write the model serialized field by field, for a tensor whose size surprised the streaming writer."""
        _write_files_atomically(self.files(_serialize(self.model, self.path, predict=False)))


class PendingSave:
    """A save_model running in a background thread while the caller does other work (the end-to-end check):
    commit() waits for it and renames the files into place as save_model does; discard() stops it and removes its
    temporary files. The model's messages are serialized before the thread starts, so the caller may change the
    model meanwhile, but not the tensors' data (held arrays are read-only)."""

    def __init__(self, model: onnx.ModelProto, path: PathLike, *, external_data: Optional[bool] = None,
                 on_written: Optional[Callable[[Placed], None]] = None):
        """on_written: called in the writing thread once every file is written and fsynced, with where the held
        tensors' arrays landed (files that commit() renames, discard() removes; open descriptors keep them
        readable)."""
        self._on_written = on_written
        self._plan = _SavePlan(model, path, external_data)
        self._files = self._plan.files(list(_serialize(self._plan.model, self._plan.path)))
        self._cancelled = False
        self._written: Optional[List[Tuple[str, Path]]] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._write, name="bnfold-save", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        placed: Placed = []
        try:
            self._written = _write_temporaries(self._files, lambda: self._cancelled, placed)
            self._files = [(path, ()) for path, _ in self._files]  # the chunks are written: let their arrays go
            if self._on_written is not None:
                self._on_written(placed)
        except BaseException as error:  # handed to commit()
            self._error = error

    def commit(self) -> None:
        self._thread.join()
        if isinstance(self._error, _SizeMismatch):
            self._plan.write_exactly()
        elif self._error is not None:
            raise self._error
        else:
            _replace_all(self._written, self._files)

    def discard(self) -> None:
        self._cancelled = True
        self._thread.join()
        if self._written:
            _remove_all(self._written)


def save_text(text: str, path: PathLike) -> None:
    """Write a UTF-8 text file (a JSON report) atomically, with the same output rules as save_model."""
    target = output_target(path)
    _write_files_atomically([(target, [text.encode("utf-8")])])
