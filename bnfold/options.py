"""Normalizers for public API arguments: one accepted shape per parameter, or a typed error naming the parameter.

A single str where one item is natural (`skip="conv"`, `input_files="data.npz"`) means that one item, never its
characters; wrong types raise ArgumentTypeError (a UsageError and a TypeError) with the parameter's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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
