"""Saving ONNX models atomically: the model, and its external data when asked, written so that a reader or a run
killed at any moment sees the old files or the complete new ones (bnfold.atomic_write), to targets chosen by the
output-path rules (bnfold.output_path), serialized as a stream that holds no second copy of the weights
(bnfold.serializing), large tensors placed in `<file name>.data` when external data is written
(bnfold.external_placement).

PendingSave writes the temporary files in a background thread while the caller works on (fold_file's end-to-end
check), and renames them only when asked to commit.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

import onnx

from .atomic_write import (Chunk, FileRange, Placed, SizeMismatch, remove_all, remove_temporaries, replace_all,
                           write_files_atomically, write_temporaries)
from .errors import ArgumentTypeError
from .external_placement import EXTERNAL_DATA_MIN_BYTES, externalize
from .output_path import data_file_path, output_target
from .serializing import serialize
from .tensors import exceeds_protobuf_limit

__all__ = ["EXTERNAL_DATA_MIN_BYTES", "FileRange", "PendingSave", "data_file_path", "output_target",
           "remove_temporaries", "save_model", "save_text"]

PathLike = Union[str, "os.PathLike[str]"]


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
        write_files_atomically(plan.files(serialize(plan.model, plan.path)))
    except SizeMismatch:
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
            chunks = externalize(self.model, data_name)
            self.data = [(data_path, chunks)] if chunks else []

    def files(self, model_chunks: Iterable[Chunk]) -> list:
        """The files to write, the model last: it refers to the data file."""
        return [*self.data, (self.path, model_chunks)]

    def write_exactly(self) -> None:
        """Write the model serialized field by field, for a tensor whose size surprised the streaming writer."""
        write_files_atomically(self.files(serialize(self.model, self.path, predict=False)))


class PendingSave:
    """A save_model running in a background thread while the caller does other work (the end-to-end check):
    start() starts it, commit() waits for it and renames the files into place as save_model does; discard() stops it
    and removes its temporary files. The caller holds the object before the thread starts, so a Ctrl-C at any
    moment finds a PendingSave to discard, never a thread writing a file nobody will remove. The model's messages are serialized before the thread starts, so the caller may change the
    model meanwhile, but not the tensors' data (held arrays are read-only). `placed`, once written: (store key,
    file, offset) of each held array."""

    def __init__(self, model: onnx.ModelProto, path: PathLike, *, external_data: Optional[bool] = None):
        self.placed: Placed = []
        self._plan = _SavePlan(model, path, external_data)
        self._files = self._plan.files(list(serialize(self._plan.model, self._plan.path)))
        self._cancelled = False
        self._written: Optional[List[Tuple[str, Path]]] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._write, name="bnfold-save", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _write(self) -> None:
        try:
            self._written = write_temporaries(self._files, lambda: self._cancelled, self.placed)
            self._files = [(path, ()) for path, _ in self._files]  # the chunks are written: let their arrays go
            # Held tensors read the arrays a fold gave them from the written files from now on, and the arrays go
            # (files that commit() renames and discard() removes: the stores' open descriptors keep them readable).
            for (store, number), written, offset in self.placed:
                store.moved_to_file(number, written, offset)
        except BaseException as error:  # handed to commit()
            self._error = error

    def commit(self) -> None:
        self._thread.join()
        if isinstance(self._error, SizeMismatch):
            self._plan.write_exactly()
        elif self._error is not None:
            raise self._error
        else:
            replace_all(self._written, self._files)

    def discard(self) -> None:
        self._cancelled = True
        if self._thread.ident is not None:  # started
            self._thread.join()
        if self._written:
            remove_all(self._written)


def save_text(text: str, path: PathLike) -> None:
    """Write a UTF-8 text file (a JSON report) atomically, with the same output rules as save_model."""
    target = output_target(path)
    write_files_atomically([(target, [text.encode("utf-8")])])
