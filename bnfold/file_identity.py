"""Which files a run reads and which it writes, compared by identity: a write that would replace a file the run
reads (a model, an external data file it names) or another of its writes is refused before anything is written.

Names do not decide: `model.onnx`, `./x/../model.onnx`, a symlink to it and a hard link of it are one file. An
existing file is its (device, inode); a path that does not exist yet is its nearest existing directory's (device,
inode) and the rest of the path, symlinks resolved, as a write would create it. A file that does not exist yet
cannot be one that is read, so models are parsed for the data files they name (without their weights) only when
some write's target already exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, Iterable, List, Sequence, Tuple, Union

from .errors import OutputError

PathLike = Union[str, "os.PathLike[str]"]
# (path, what it is to the run: "the input model", "the output model", "the JSON report", ...)
Named = Tuple[PathLike, str]


def identity(path: PathLike) -> Hashable:
    """What makes two paths the same file (see the module docstring)."""
    text = os.fspath(path)
    try:
        status = os.stat(text)
        return ("file", status.st_dev, status.st_ino)
    except (OSError, ValueError):
        pass
    real = Path(os.path.realpath(text))
    rest: List[str] = []
    current = real
    while True:
        try:
            status = os.stat(current)
            return ("new", status.st_dev, status.st_ino, tuple(reversed(rest)))
        except (OSError, ValueError):
            if current.parent == current:
                return ("path", str(real))
            rest.append(current.name)
            current = current.parent


def exists(path: PathLike) -> bool:
    return identity(path)[0] == "file"


def refuse_overlaps(reads: Iterable[Named], writes: Iterable[Named], *,
                    replaceable: Iterable[Tuple[PathLike, PathLike]] = ()) -> None:
    """Raise OutputError (nothing has been written yet) when a write is the same file as a read or as another
    write. replaceable: (write, read) pairs where the write may replace the read (a model's output its own input,
    with --overwrite)."""
    allowed = {(identity(write), identity(read)) for write, read in replaceable}
    read_by_id = {}
    for path, what in reads:
        read_by_id.setdefault(identity(path), (path, what))
    written = {}
    for path, what in writes:
        key = identity(path)
        if key in written:
            other_path, other_what = written[key]
            raise OutputError(f"{what} {os.fspath(path)} and {other_what} {os.fspath(other_path)} are the same "
                              "file: choose different paths (nothing was written)")
        written[key] = (path, what)
        if key in read_by_id and (key, key) not in allowed:
            read_path, read_what = read_by_id[key]
            same = os.path.abspath(read_path) == os.path.abspath(path)
            shown = f"{what} {os.fspath(path)} is {read_what}" if same else \
                f"{what} {os.fspath(path)} is {os.fspath(read_path)}, {read_what}"
            raise OutputError(f"{shown}; bnfold never replaces a file it reads: choose another path (nothing was "
                              "written)")


def external_data_files(model, model_path: PathLike) -> List[Path]:
    """The files the external tensors of a parsed model (external data not loaded yet) name, resolved beside it."""
    from .tensor_store import is_external
    from .tensors import external_info, iter_tensors

    base = Path(model_path).parent
    files = []
    for tensor in iter_tensors(model):
        if is_external(tensor):
            location = external_info(tensor).get("location")
            if location and not os.path.isabs(location):
                files.append(base / location)
    return list(dict.fromkeys(files))


def model_files(path: PathLike) -> List[Named]:
    """The model file and the external data files it names, each with what it is; the model is parsed without its
    weights. A model that cannot be read is only itself here (reading it will say what is wrong)."""
    from .errors import BnfoldError
    from .loading import holding, is_stream, load_model

    files: List[Named] = [(path, "an input model")]
    if is_stream(path):
        return files
    try:
        with holding(path) as held:
            model = load_model(path, load_external_data=False, held=held)
    except BnfoldError:
        return files
    files += [(data, f"external data of {os.fspath(path)}") for data in external_data_files(model, path)]
    return files


def refuse_overlaps_with_models(models: Sequence[PathLike], writes: Sequence[Named], *,
                                replaceable: Iterable[Tuple[PathLike, PathLike]] = ()) -> None:
    """refuse_overlaps for a run that reads `models`: their external data files are found (see model_files) only
    when a write's target exists already."""
    reads: List[Named] = [(model, "an input model") for model in models]
    if any(exists(path) for path, _ in writes):
        for model in models:
            reads += model_files(model)[1:]
    refuse_overlaps(reads, writes, replaceable=replaceable)
