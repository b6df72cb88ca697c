"""Where a write to a path goes: a symlink is followed (the write happens beside the file it points to, so the link
stays a link); an existing path that is not a regular file (directory, device node, FIFO, socket) is refused and
never replaced; `-` is refused (models are not streamed to stdout); a path ending in `/` names a directory, which is
refused (the command line writes into such a directory under the input's own name). The external data file beside
a model follows the same rules.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Union

from .errors import ArgumentTypeError, OutputError

PathLike = Union[str, "os.PathLike[str]"]


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
