"""onnx.checker's verdict on a model as one typed error (InvalidModelError, or ExternalDataError when external data
is at fault), with an opset newer than the installed onnx refused up front. A model whose weights the loader has
already measured is checked as a skeleton: those tensors' bytes replaced by a stand-in the checker does not read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import onnx

from .errors import InvalidModelError
from .external_data import check_external_data
from .reading import read_header, read_model
from .saving import save_model
from .tensor_store import is_external
from .tensors import exceeds_protobuf_limit, iter_tensors
from .wire import is_repeated, set_field

PathLike = Union[str, "os.PathLike[str]"]


def _newer_opset(model: onnx.ModelProto) -> Optional[str]:
    """A message when the model imports an opset of an ONNX domain newer than the installed onnx knows."""
    known = onnx.defs.C.schema_version_map()
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        if domain in known and opset.version > known[domain][1]:
            label = opset.domain or "ai.onnx (default)"
            return (f"model imports opset {opset.version} of domain {label}, but the installed onnx "
                    f"{onnx.__version__} knows only up to {known[domain][1]}; upgrade onnx (or pass --no-check)")
    return None


def _explain_external_data(path: Path) -> None:
    """When the checker refused a model file, raise bnfold's own ExternalDataError if external data is at fault."""
    model, _ = read_model(path)
    if any(is_external(tensor) for tensor in iter_tensors(model)):
        check_external_data(model, path.parent)


def _message_types_holding_tensors() -> frozenset:
    """Full names of the message types that are, or can contain, a TensorProto."""
    types, pending = {}, [onnx.ModelProto.DESCRIPTOR]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name not in types:
            types[descriptor.full_name] = descriptor
            pending.extend(field.message_type for field in descriptor.fields if field.message_type is not None)
    holders = {onnx.TensorProto.DESCRIPTOR.full_name}
    while True:
        grown = holders | {name for name, descriptor in types.items()
                           if any(field.message_type is not None and field.message_type.full_name in holders
                                  for field in descriptor.fields)}
        if grown == holders:
            return frozenset(holders)
        holders = grown


_TENSOR_HOLDERS = _message_types_holding_tensors()
# An external-data location starting with '#' names in-memory data: the checker does not look for such a file.
_SKELETON_LOCATION = "#bnfold-skeleton"


def _stand_in(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The tensor with every field but its raw data (or where its external data lives), marked as stored
    elsewhere."""
    stand_in = onnx.TensorProto()
    for field in tensor.DESCRIPTOR.fields:
        if field.name in ("raw_data", "external_data"):
            continue
        if is_repeated(field):
            getattr(stand_in, field.name).extend(getattr(tensor, field.name))
        elif tensor.HasField(field.name):
            setattr(stand_in, field.name, getattr(tensor, field.name))
    stand_in.data_location = onnx.TensorProto.EXTERNAL
    entry = stand_in.external_data.add()
    entry.key, entry.value = "location", _SKELETON_LOCATION
    return stand_in


def checker_skeleton(message, stand_ins: set):
    """A copy of `message` in which the tensors whose ids are in `stand_ins` are replaced by their _stand_in."""
    if isinstance(message, onnx.TensorProto):
        return _stand_in(message) if id(message) in stand_ins else message
    copy = type(message)()
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.full_name in _TENSOR_HOLDERS:
            if is_repeated(field):
                getattr(copy, field.name).extend(checker_skeleton(element, stand_ins) for element in value)
            else:
                getattr(copy, field.name).CopyFrom(checker_skeleton(value, stand_ins))
        else:
            set_field(copy, field, value)
    return copy


def check_skeleton(model: onnx.ModelProto, measured: Sequence[onnx.TensorProto]) -> None:
    """check_model's verdict on a model whose `measured` tensors hold exactly the raw data their dims and type
    need: for such a tensor the checker finds nothing to refuse but the dims and type themselves, which the stand-in
    keeps. The checker then neither serializes nor re-parses the weights. Nodes out of topological order are
    sorted in the skeleton (fold() sorts the model itself and reports it); a cycle is refused here."""
    from .graph.order import sort_nodes

    skeleton = checker_skeleton(model, {id(tensor) for tensor in measured})
    sort_nodes(skeleton)
    check_model(skeleton)


def check_model(model: Union[onnx.ModelProto, PathLike], *, full_check: bool = False) -> None:
    """Run onnx.checker, turning its verdict into InvalidModelError with the checker's message on one line.

    `model` is a ModelProto or the path of a model file (checked in place, external data and all, with no copy).
    Also refuses an opset newer than the installed onnx knows: the checker lets it pass, but its operators cannot be
    checked and ONNX Runtime cannot run it.
    """
    newer = _newer_opset(model if isinstance(model, onnx.ModelProto) else read_header(model))
    if newer:
        raise InvalidModelError(newer)
    try:
        if not isinstance(model, onnx.ModelProto):
            onnx.checker.check_model(str(model), full_check=full_check)
        elif exceeds_protobuf_limit(model):
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / "model.onnx"
                save_model(model, target, external_data=True)
                onnx.checker.check_model(str(target), full_check=full_check)
        else:
            onnx.checker.check_model(model, full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        if not isinstance(model, onnx.ModelProto):
            _explain_external_data(Path(model))
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise InvalidModelError(f"model fails onnx.checker: {message or type(error).__name__}") from None
    except UnicodeDecodeError:
        # The checker names the offending field in its message, which then is not UTF-8 itself.
        raise InvalidModelError("model fails onnx.checker: a name or string in the model is not valid UTF-8") \
            from None
    except ValueError as error:
        # onnx's C++ side re-parses the model and refuses some protos Python's parser accepted.
        raise InvalidModelError(f"onnx.checker cannot read the model: {str(error).splitlines()[0]}") from None
