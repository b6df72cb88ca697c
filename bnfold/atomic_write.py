"""Writing files atomically: every file goes to a temporary file in its target's directory, is flushed and
fsynced, and only then renamed over the target: a reader, or a run killed at any moment, sees the old file or the
complete new one. A failed write removes its temporary files and leaves the targets untouched; a killed writer's
temporaries carry its pid so that whoever killed it can remove them (remove_temporaries).

What is written is a sequence of chunks: bytes, a tensor's raw data read only when written (TensorData), a held
tensor's array (HeldBytes) or a range of another file, copied file to file (FileRange, copy_file_range where the
kernel can; see bnfold.tensor_store).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import onnx

from .errors import OutputError
from .tensor_store import read_at
from .output_path import data_file_path, output_target

PathLike = Union[str, "os.PathLike[str]"]

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    made ahead holds no copy of it), `length` bytes long or SizeMismatch."""

    __slots__ = ("tensor", "length")

    def __init__(self, tensor: onnx.TensorProto, length: int):
        self.tensor, self.length = tensor, length

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        raw = self.tensor.raw_data
        if len(raw) != self.length:
            raise SizeMismatch(self.tensor.name)
        return raw


class HeldBytes:
    """A chunk that is the array a held tensor holds (see bnfold.tensor_store); a writer asked to can say where it
    landed.
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
# (held key, file, offset): where a writer put the bytes of a HeldBytes chunk (key: TensorStore.key).
Placed = List[Tuple[tuple, str, int]]


class Cancelled(Exception):
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
                    raise Cancelled()
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


def write_files_atomically(files: Sequence[Tuple[Path, Iterable[Chunk]]]) -> None:
    """Write every file to a temporary one first and rename them over their targets in order only when all are
    complete: a failure (disk full, interrupt) before the renames leaves every target as it was and no temporary
    file behind. Put the file that refers to the others (the model) last."""
    replace_all(write_temporaries(files), files)


def write_temporaries(files: Sequence[Tuple[Path, Iterable[Chunk]]], cancelled: Callable[[], bool] = lambda: False,
                       placed: Optional[Placed] = None) -> List[Tuple[str, Path]]:
    """The temporary files of write_files_atomically, written; none left behind when one fails."""
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
        remove_all(written)
        raise
    return written


def remove_all(written: List[Tuple[str, Path]]) -> None:
    for tmp_name, _ in written:
        _remove_quietly(tmp_name)


def replace_all(written: List[Tuple[str, Path]], files: Sequence[Tuple[Path, Iterable[Chunk]]]) -> None:
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
        remove_all(written)
    for directory in {path.parent for path, _ in files}:
        _fsync_dir(directory)


class SizeMismatch(Exception):
    """A tensor's raw data is not the size its dims and type predict: serialize the slow, exact way instead."""
