"""The options of each layer, and the normalizers that check public API arguments.

One frozen object per layer, checked once where it is made and then passed through: FoldOptions (how bnfold.fold
folds), VerifyOptions (how a fold is checked end to end) and FileOptions (how bnfold.fold_file reads and writes);
FoldFileOptions carries the three for fold_file, bnfold.fold_files and their workers (they pickle). A keyword of
fold_file is the field of that name in its layer (FoldFileOptions.from_keywords), so an option is one field.

Normalizers: one accepted shape per parameter, or a typed error naming the parameter. A single str where one item
is natural (`skip="conv"`, `input_files="data.npz"`) means that one item, never its characters; wrong types raise
ArgumentTypeError (a UsageError and a TypeError) with the parameter's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
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


def _names(cls) -> Tuple[str, ...]:
    return tuple(item.name for item in fields(cls))


def _of(cls, value: Any, parameter: str):
    """An options object as given, or one made from a mapping of its fields; None gives the defaults."""
    if isinstance(value, cls):
        return value
    mapping = as_mapping(value, parameter)
    unknown = sorted(set(mapping) - set(_names(cls)))
    if unknown:
        raise UsageError(f"{parameter}: unknown option(s) {unknown}; options are: {', '.join(_names(cls))}")
    return cls(**mapping)


def _given_or_made(given: Any, made: Any, default: Any, names, value, parameter: str) -> Any:
    """An options object passed whole (`given`), or the one an API call's keywords made (`made`); a keyword that
    sets an option alongside the whole object (`value(made, name)` off its default) is a UsageError."""
    if given is None:
        return made
    if not isinstance(given, type(made)):
        raise ArgumentTypeError(parameter, f"expected a bnfold.options.{type(made).__name__}, got "
                                           f"{type(given).__name__}")
    both = [name for name in names if value(made, name) != value(default, name)]
    if both:
        raise UsageError(f"{parameter}: given together with {', '.join(both)}; pass each option once, in "
                         f"{parameter}= or as a keyword")
    return given


def _set(options: Any, name: str, value: Any) -> None:
    """A frozen options object stores each field normalized, once, as it is made."""
    object.__setattr__(options, name, value)


@dataclass(frozen=True)
class FoldOptions:
    """How bnfold.fold folds (the fold layer).

    fold_input_initializers: treat initializers that are also graph inputs (IR >= 4) as constants; the default
    when at least 90% of the initializers are inputs (bnfold.initializer_inputs), unless keep_input_initializers.
    skip: rules (forward, backward, decomposed, standalone) or producers (conv, conv_transpose, gemm, matmul) not to
    use; see bnfold.rules.RULE_NAMES.
    inline_functions: inline model-local functions first, so BNs fed by function inputs fold per call site.
    local_check: check every fold on its own in ONNX Runtime and undo those that fail.
    standalone: replace a BN with nothing to fold into by Mul + Add (off by default: ONNX Runtime runs Mul + Add
    1.1-1.5x slower than the BatchNormalization it replaces, measured by benchmarks/runtime_latency.py)."""

    fold_input_initializers: bool = False
    keep_input_initializers: bool = False
    skip: Tuple[str, ...] = ()
    inline_functions: bool = False
    local_check: bool = True
    standalone: bool = False

    def __post_init__(self):
        from .rules import RULE_NAMES

        for item in fields(self):
            value = getattr(self, item.name)
            _set(self, item.name, as_names(value, item.name) if item.name == "skip" else as_flag(value, item.name))
        unknown = sorted(set(self.skip) - set(RULE_NAMES))
        if unknown:
            raise UsageError(f"unknown rule(s) {unknown}; rules are: {', '.join(RULE_NAMES)}")
        if self.fold_input_initializers and self.keep_input_initializers:
            raise UsageError("--fold-input-initializers and --keep-input-initializers contradict each other; "
                             "pass one of them")

    @classmethod
    def of(cls, value: Any, parameter: str = "fold_options") -> "FoldOptions":
        """A FoldOptions as given, or one made from a mapping of its fields; None gives the defaults."""
        return _of(cls, value, parameter)

    @classmethod
    def given_or_made(cls, given: Any, keywords: Mapping[str, Any], parameter: str = "options") -> "FoldOptions":
        """`given` (a FoldOptions) when no keyword sets an option too; else the FoldOptions the keywords make."""
        return _given_or_made(given, cls(**keywords), cls(), keywords, getattr, parameter)


@dataclass(frozen=True)
class VerifyOptions:
    """How `bnfold MODEL -o OUT` (fold_file) checks a fold end to end (the verify layer): bnfold.verify's keywords.

    input_shapes: "name:1x3x224x224" strings (or {name: shape}); input_files: .npz / NAME:file.npy; seed, runs:
    random inputs; atol, rtol: a number or {output: number} (None: by dtype, following the data); intermediates:
    also compare the tensors both models share ("boundaries": the fold boundaries, and the rest only to localize a
    failure; True: all); ort_opt_level: ONNX Runtime's optimization level for both. The shapes, and the output
    names a tolerance gives, are checked against the model by bnfold.verify; the rest here.
    """

    input_shapes: Any = None
    input_files: Any = ()
    seed: int = 0
    runs: int = 1
    atol: Any = None
    rtol: Any = None
    intermediates: Any = "boundaries"
    ort_opt_level: str = "disable"

    def __post_init__(self):
        from .runtime import OPT_LEVELS

        _set(self, "input_files", as_paths(self.input_files, "input_files"))
        _set(self, "seed", as_seed(self.seed))
        _set(self, "runs", as_count(self.runs, "runs", minimum=1))
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, Mapping))):
                raise ArgumentTypeError(name, f"expected a number or {{output name: number}}, got "
                                              f"{type(value).__name__} ({value!r})")
        if self.intermediates not in (True, False, "boundaries"):
            raise UsageError(f"intermediates: expected True, False or 'boundaries', got {self.intermediates!r}")
        if self.ort_opt_level not in OPT_LEVELS:
            raise UsageError(f"ort_opt_level: unknown ORT optimization level {self.ort_opt_level!r}; "
                             f"choose one of {', '.join(OPT_LEVELS)}")

    @classmethod
    def of(cls, value: Any, parameter: str = "verify_options") -> "VerifyOptions":
        """A VerifyOptions as given, or one made from a mapping of its fields; None gives the defaults."""
        return _of(cls, value, parameter)

    def keywords(self) -> Dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


@dataclass(frozen=True)
class FileOptions:
    """How bnfold.fold_file reads and writes (the file layer).

    verify: check the fold end to end in ONNX Runtime, and each fold on its own; force: write even when that check
    fails; dry_run: fold and report, write nothing; overwrite: the output may be the input itself; check: run
    onnx.checker on the input; external_data: weights in OUTPUT.data (None: only above protobuf's 2 GiB limit);
    require_end_to_end: an end-to-end check that cannot run (no input size lets the original run) is an error."""

    verify: bool = True
    force: bool = False
    dry_run: bool = False
    overwrite: bool = False
    check: bool = True
    external_data: Optional[bool] = None
    require_end_to_end: bool = False

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if not (item.name == "external_data" and value is None):
                _set(self, item.name, as_flag(value, item.name))


@dataclass(frozen=True)
class FoldFileOptions:
    """Everything bnfold.fold_file is told, one object per layer: made once (by the CLI, fold_file or fold_files)
    and passed through to the fold, the end-to-end check and the write, and to batch workers (it pickles).

    fold_file's keywords are the fields of the layers (FoldOptions' local_check aside: fold_file checks each fold
    when it verifies), and verify_options, the verify layer whole: keyword_names()."""

    fold: FoldOptions = field(default_factory=FoldOptions)
    verification: VerifyOptions = field(default_factory=VerifyOptions)
    file: FileOptions = field(default_factory=FileOptions)

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if type(value).__name__ != item.type:
                raise ArgumentTypeError(item.name, f"expected a bnfold.options.{item.type}, got {type(value).__name__}")

    @staticmethod
    def keyword_names() -> Tuple[str, ...]:
        """fold_file's keywords that set an option, each the name of one field of one layer."""
        return (*(name for name in _names(FoldOptions) if name != "local_check"), "verify_options",
                *_names(FileOptions))

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any], parameter: str = "fold_options") -> "FoldFileOptions":
        """fold_file's keywords (any subset), each given to the layer whose field it names."""
        names = cls.keyword_names()
        unknown = sorted(set(keywords) - set(names))
        if unknown:
            raise UsageError(f"{parameter}: unknown option(s) {unknown}; options are: {', '.join(names)}")
        file = FileOptions(**{name: keywords[name] for name in _names(FileOptions) if name in keywords})
        fold = FoldOptions(**{name: keywords[name] for name in _names(FoldOptions) if name in keywords},
                           local_check=file.verify)
        return cls(fold=fold, verification=VerifyOptions.of(keywords.get("verify_options")), file=file)

    @classmethod
    def of(cls, options: Any, keywords: Mapping[str, Any], parameter: str = "options") -> "FoldFileOptions":
        """`options` as given, when no keyword sets an option too; else the options the keywords make."""
        return _given_or_made(options, cls.from_keywords(keywords), cls(), cls.keyword_names(), cls.keyword,
                              parameter)

    def keyword(self, name: str) -> Any:
        """The value of fold_file's keyword `name`."""
        if name == "verify_options":
            return self.verification
        return getattr(self.file if name in _names(FileOptions) else self.fold, name)
