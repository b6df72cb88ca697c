"""Normalizers for public API arguments: one accepted shape per parameter, or a typed error naming the parameter.

A single str where one item is natural (`skip="conv"`, `input_files="data.npz"`) means that one item, never its
characters; wrong types raise ArgumentTypeError (a UsageError and a TypeError) with the parameter's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Tuple

from .errors import ArgumentTypeError, UsageError


def as_names(value: Any, parameter: str) -> Tuple[str, ...]:
    """None -> (); 'conv' -> ('conv',); any iterable of str -> a tuple of them (order kept)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (bytes, bytearray, Mapping)) or not _iterable(value):
        raise ArgumentTypeError(parameter, f"expected a str or a sequence of str, got {type(value).__name__}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ArgumentTypeError(parameter, f"expected str items, got {type(item).__name__} ({item!r})")
    return items


def as_paths(value: Any, parameter: str) -> Tuple[str, ...]:
    """A path (str or os.PathLike) or a sequence of them -> a tuple of str."""
    if value is None:
        return ()
    if isinstance(value, (str, os.PathLike)):
        return (os.fspath(value),)
    if isinstance(value, (bytes, bytearray, Mapping)) or not _iterable(value):
        raise ArgumentTypeError(parameter, f"expected a path or a sequence of paths, got {type(value).__name__}")
    paths = []
    for item in value:
        if not isinstance(item, (str, os.PathLike)):
            raise ArgumentTypeError(parameter, f"expected path items, got {type(item).__name__} ({item!r})")
        paths.append(os.fspath(item))
    return tuple(paths)


def as_mapping(value: Any, parameter: str) -> Dict[Any, Any]:
    """None -> {}; a Mapping -> a dict copy; anything else is an ArgumentTypeError."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(parameter, f"expected a mapping, got {type(value).__name__}")
    return dict(value)


def as_flag(value: Any, parameter: str) -> bool:
    """A bool (numpy's too); anything else, such as the string 'false', is an ArgumentTypeError."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ArgumentTypeError(parameter, f"expected True or False, got {type(value).__name__} ({value!r})")


def as_count(value: Any, parameter: str, *, minimum: int = 0, optional: bool = False) -> Optional[int]:
    """An int >= minimum (None allowed when optional); bools are not counts."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ArgumentTypeError(parameter, f"expected an integer, got {type(value).__name__} ({value!r})")
    number = int(value.__index__())
    if number < minimum:
        raise UsageError(f"{parameter}: must be at least {minimum}, got {number}")
    return number


def as_seed(value: Any, parameter: str = "seed") -> int:
    """A random seed: a non-negative integer (numpy refuses negative ones)."""
    return as_count(value, parameter, minimum=0)


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


@dataclass(frozen=True)
class VerifyOptions:
    """How `bnfold MODEL -o OUT` (fold_file) checks a fold end to end: bnfold.verify's keywords, typed.

    input_shapes: "name:1x3x224x224" strings (or {name: shape}); input_files: .npz / NAME:file.npy; seed, runs:
    random inputs; atol, rtol: a number or {output: number} (None: by dtype, following the data); intermediates:
    also compare the tensors both models share ("boundaries": the fold boundaries, and the rest only to localize a
    failure; True: all); ort_opt_level: ONNX Runtime's optimization level for both.
    """

    input_shapes: Any = None
    input_files: Any = ()
    seed: int = 0
    runs: int = 1
    atol: Any = None
    rtol: Any = None
    intermediates: Any = "boundaries"
    ort_opt_level: str = "disable"

    @classmethod
    def of(cls, value: Any, parameter: str = "verify_options") -> "VerifyOptions":
        """A VerifyOptions as given, or one made from a mapping of its fields; None gives the defaults."""
        if isinstance(value, cls):
            return value
        mapping = as_mapping(value, parameter)
        unknown = sorted(set(mapping) - {item.name for item in fields(cls)})
        if unknown:
            raise UsageError(f"{parameter}: unknown option(s) {unknown}; options are: "
                             f"{', '.join(item.name for item in fields(cls))}")
        return cls(**mapping)

    def keywords(self) -> Dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}
