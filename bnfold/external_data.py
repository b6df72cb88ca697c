"""Resolving and loading a model's external data: each external tensor's file, offset and length, refused when
the file is missing, truncated, or outside the model's directory (symlinks resolved), then read into the model and
checked against the tensor's shape and type.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import onnx

from .errors import ExternalDataError
from .tensor_store import is_external
from .tensors import external_info, iter_tensors
from .wellformed import tensor_problem


def external_location(tensor: onnx.TensorProto, base: Path) -> Tuple[Path, int, Optional[int]]:
    """The resolved data file, offset and length of an external tensor, refusing paths outside `base`."""
    info = external_info(tensor)
    location = info.get("location", "")
    if not location:
        raise ExternalDataError(f"tensor {tensor.name!r} is marked external but names no file")
    if os.path.isabs(location) or location.startswith(("\\", "/")):
        raise ExternalDataError(
            f"tensor {tensor.name!r}: external data path {location!r} is absolute; "
            "bnfold only reads data files inside the model's directory"
        )
    try:
        target = (base / location).resolve()
    except (ValueError, OSError) as error:
        raise ExternalDataError(f"tensor {tensor.name!r}: external data path {location!r} is invalid ({error})") \
            from None
    if base not in target.parents:
        raise ExternalDataError(
            f"tensor {tensor.name!r}: external data path {location!r} leaves the model's directory; refused"
        )
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise ExternalDataError(f"tensor {tensor.name!r}: external data offset/length are not integers "
                                f"({info.get('offset')!r}, {info.get('length')!r})") from None
    if offset < 0 or (length is not None and length < 0):
        raise ExternalDataError(f"tensor {tensor.name!r}: negative external data offset or length")
    return target, offset, length


def check_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external data that is missing, truncated, or outside the model's directory (symlinks resolved)."""
    base = base_dir.resolve()
    for tensor in iter_tensors(model):
        if not is_external(tensor):
            continue
        target, offset, length = external_location(tensor, base)
        location = external_info(tensor)["location"]
        if not target.is_file():
            raise ExternalDataError(f"tensor {tensor.name!r}: external data file {location!r} is missing")
        size = target.stat().st_size
        end = offset + length if length is not None else None
        if offset > size or (end is not None and end > size):
            raise ExternalDataError(
                f"tensor {tensor.name!r}: external data file {location!r} is truncated "
                f"({size} bytes, tensor needs bytes {offset}..{end if end is not None else '?'})"
            )


def load_external_data(model: onnx.ModelProto, path: Path, data_files: Optional[list] = None) -> None:
    """Read the external data of the model file at `path` into its tensors, checked; `data_files` gets the files read."""
    external = [tensor for tensor in iter_tensors(model) if is_external(tensor)]
    if not external:
        return
    check_external_data(model, path.parent)
    if data_files is not None:
        base = path.parent.resolve()
        data_files.extend(dict.fromkeys(external_location(tensor, base)[0] for tensor in external))
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as error:
        raise ExternalDataError(f"{path}: cannot load external data ({error})") from None
    for tensor in external:
        tensor.ClearField("data_location")  # onnx sets it to DEFAULT; cleared, the model serializes as if inline
        problem = tensor_problem(tensor)
        if problem:
            raise ExternalDataError(f"{path}: external data of {problem}")
