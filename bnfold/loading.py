"""Loading and checking ONNX models with typed errors and safe external data.

Loading refuses, with one line a user can act on, anything that is not a complete, well-formed model: a missing
path, a directory, an empty file, bytes that do not parse, a model whose tensors do not hold the data their shape
and type promise (a truncated or bit-flipped file often still parses), strings that are not UTF-8, and external
data that is missing, truncated, or outside the model's directory.

This module sequences one load; each step is its own module: bnfold.reading (the path, the memory-mapped file or
stream), bnfold.parsing (the field-by-field parse), bnfold.wellformed (strings and tensor data),
bnfold.external_data (resolving and reading data files) and bnfold.model_checker (onnx.checker on a skeleton).
Their public names are importable from here too, and bnfold.tensor_store's `holding`: a caller that wants a model's
large weights left in its file opens it and passes what it gives as `held`, without knowing the store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import onnx

from .errors import InvalidModelError
from . import external_data
from .model_checker import check_model, check_skeleton, checker_skeleton
from .parsing import parse_model_bytes
from .reading import is_stream, read_header, read_model, read_stream
from .tensor_store import holding, is_external
from .tensors import iter_tensors
from .wire import set_field

__all__ = ["check_model", "holding", "is_stream", "load_checked_model", "load_model", "parse_model_bytes", "read_header",
           "read_stream", "set_field"]

PathLike = Union[str, "os.PathLike[str]"]


def load_model(path: PathLike, *, load_external_data: bool = True, held=None, data: Optional[bytes] = None,
               data_files: Optional[list] = None) -> onnx.ModelProto:
    """Read an ONNX model, raising a typed error for anything a user could have got wrong. held: what
    holding(path) gives, to keep large initializers' bytes in the file (see bnfold.tensor_store).
    data: the file's bytes when they were read already (a stream: see read_stream). data_files: a list that gets
    the external data files read."""
    path = Path(path)
    model, _ = read_model(path, held, data)
    if load_external_data:
        external_data.load_external_data(model, path, data_files)
    return model


def load_checked_model(path: PathLike, *, check: bool = True, held=None, data: Optional[bytes] = None,
                       data_files: Optional[list] = None) -> onnx.ModelProto:
    """load_model, and (with check) check_model's verdict on it, reading and parsing the file once.

    The checker sees the model's skeleton: tensors whose data the loader has measured against their dims and type
    keep those but not their bytes, which the checker would only have measured again (see bnfold.model_checker).
    """
    path = Path(path)
    model, measured = read_model(path, held, data)
    if check:
        from .graph.order import sort_nodes

        if any(is_external(tensor) for tensor in iter_tensors(model)) and data is None:
            try:
                check_model(path)  # the checker's own external-data rules need the files beside the model
            except InvalidModelError:
                # Refused for nodes out of order? The skeleton, sorted as fold() will sort the model, decides.
                external = [tensor for tensor in iter_tensors(model) if is_external(tensor)]  # held: ids stay valid
                skeleton = checker_skeleton(model, {id(tensor) for tensor in external})
                if not sort_nodes(skeleton):
                    raise
                check_model(skeleton)
        else:
            check_skeleton(model, measured)
    external_data.load_external_data(model, path, data_files)
    return model
