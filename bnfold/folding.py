"""The fold API: fold a model in memory (bnfold.engine does the work), or load, fold, verify and write a file."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple, Union

import onnx
import onnx.inliner

from .loading import holding, is_stream, load_checked_model, load_model, read_stream
from .file_identity import identity, refuse_overlaps
from .saving import PendingSave, data_file_path, save_model
from .tensors import exceeds_protobuf_limit, tensor_bytes
from .errors import (ArgumentTypeError, InvalidModelError, OutputError, UnresolvedShapeError, UsageError,
                     VerificationFailed)
from .engine import Engine
from .graph import DEFAULT_DOMAINS, subgraphs
from .graph.order import sort_nodes
from .graphsurgeon import fold_graphsurgeon, is_graphsurgeon_graph
from .initializer_inputs import as_constants, kept_for_them, removed_inputs, survey
from .options import FileOptions, FoldFileOptions, FoldOptions, VerifyOptions, as_flag
from .report import FoldReport

if TYPE_CHECKING:
    import onnx_graphsurgeon

def count_ops(model: onnx.ModelProto) -> Dict[str, int]:
    """Op types over the main graph, its subgraphs and model-local functions."""
    counts: Counter = Counter()
    pending = [model.graph.node, *(function.node for function in model.functions)]
    while pending:
        for node in pending.pop():
            counts[node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"] += 1
            pending.extend(sub.node for sub in subgraphs(node))
    return dict(counts)


def fold(
    model: Union[onnx.ModelProto, str, "os.PathLike[str]", "onnx_graphsurgeon.Graph"],
    *,
    fold_input_initializers: bool = False,
    keep_input_initializers: bool = False,
    skip: Union[str, Sequence[str]] = (),
    inline_functions: bool = False,
    inplace: bool = False,
    local_check: bool = True,
    standalone: bool = False,
) -> Tuple[onnx.ModelProto, FoldReport]:
    """Fold every foldable eval-mode BatchNormalization; return the folded model and a report of each BN.

    `model` is a ModelProto (copied unless inplace=True), a path, or an onnx-graphsurgeon Graph (then a new Graph
    is returned: see bnfold.graphsurgeon for what that round trip keeps). `skip` is a rule name or a sequence of
    them. Every BN is either folded or listed in the report with the reason it stays; the graph's outputs, opsets
    and metadata are unchanged, and so are its inputs, except for initializers listed as inputs that the fold left
    unread (report.removed_inputs): those go when they are constants, below IR 4, with fold_input_initializers, and
    by default when at least 90% of the initializers are inputs (old PyTorch exports; report.initializer_inputs),
    unless keep_input_initializers keeps every such input overridable. Nodes out of topological order are sorted
    first (report.sorted_graphs); a cycle raises InvalidModelError.

    local_check: run every fold's replaced piece and its replacement on their own in ONNX Runtime (see
    bnfold.checking.local); a fold that fails is not applied and its BN stays, with the reason. With inplace=True
    the model is serialized once first, to fold again without the failing BNs should one fail.
    """
    options = FoldOptions(fold_input_initializers=fold_input_initializers,
                          keep_input_initializers=keep_input_initializers, skip=skip,
                          inline_functions=inline_functions, local_check=local_check, standalone=standalone)
    return fold_model(model, options, inplace=as_flag(inplace, "inplace"))


def fold_model(
    model: Union[onnx.ModelProto, str, "os.PathLike[str]", "onnx_graphsurgeon.Graph"],
    options: FoldOptions,
    *,
    inplace: bool = False,
    reload: Optional[Callable[[], onnx.ModelProto]] = None,
) -> Tuple[onnx.ModelProto, FoldReport]:
    """bnfold.fold with its options made: what fold_file, bnfold check and bnfold bench --fold call.

    reload: a way back to the model as it was, for an inplace fold (fold_file reads the file again); else the
    model is serialized first when the local check may need it."""
    if is_graphsurgeon_graph(model):
        return fold_graphsurgeon(model, lambda exported: fold_model(exported, options, inplace=True))
    if isinstance(model, (str, os.PathLike)):
        path = model
        model, reload = load_model(path), (lambda: load_model(path))
    elif not isinstance(model, onnx.ModelProto):
        raise ArgumentTypeError("model", "expected an onnx.ModelProto, a path or an onnx_graphsurgeon.Graph, "
                                f"got {type(model).__name__}")
    elif not inplace:
        original, model = model, onnx.ModelProto()
        model.CopyFrom(original)

        def reload():
            copy = onnx.ModelProto()
            copy.CopyFrom(original)
            return copy
    else:
        reload = reload or _snapshot(model, options)
    started = time.perf_counter()
    sorted_graphs = sort_nodes(model)
    report = FoldReport(ops_before=count_ops(model), initializer_bytes_before=tensor_bytes(model),
                        initializer_inputs=survey(model, fold_input_initializers=options.fold_input_initializers,
                                                  keep_input_initializers=options.keep_input_initializers),
                        sorted_graphs=sorted_graphs)
    # The engine reads one flag: initializer inputs are constants when asked for or when the exporter's habit is clear.
    options = replace(options, fold_input_initializers=as_constants(report.initializer_inputs,
                                                                    options.fold_input_initializers),
                      keep_input_initializers=False)
    inputs_before = [value.name for value in model.graph.input]
    excluded: Dict[tuple, str] = {}
    while True:
        working = onnx.inliner.inline_local_functions(model) if options.inline_functions and model.functions \
            else model
        engine = Engine(working, options, excluded=excluded, model_bytes=report.initializer_bytes_before)
        engine.run()
        if not engine.local_failures:
            break
        # A fold failed its local check (a bnfold bug): fold again from the original, keeping those BNs.
        excluded.update(engine.local_failures)
        model = reload()
        sort_nodes(model)
    model = working
    report.decisions = engine.decisions
    report.decomposed = engine.decomposed
    report.removed_inputs = removed_inputs(inputs_before, model)
    if report.initializer_inputs is not None:
        report.initializer_inputs.bn_kept = kept_for_them(report.decisions)
        report.initializer_inputs.inputs_removed = len(report.removed_inputs)
    report.merges = engine.merges
    report.local_check = engine.local_summary
    report.ops_after = count_ops(model)
    report.initializer_bytes_after = tensor_bytes(model)
    report.elapsed_s = report.fold_s = time.perf_counter() - started
    return model, report


def _snapshot(model: onnx.ModelProto, options: FoldOptions) -> Callable[[], onnx.ModelProto]:
    """A way back to the model as it was, for a second fold; serialized only when the local check may need it."""
    if not options.local_check:
        return lambda: model
    data = model.SerializeToString()
    return lambda: onnx.load_from_string(data)


def fold_file(
    source: Union[str, "os.PathLike[str]"],
    destination: Optional[Union[str, "os.PathLike[str]"]] = None,
    *,
    verify: bool = True,
    force: bool = False,
    dry_run: bool = False,
    overwrite: bool = False,
    check: bool = True,
    external_data: Optional[bool] = None,
    verify_options: Union[None, VerifyOptions, Dict[str, object]] = None,
    fold_input_initializers: bool = False,
    keep_input_initializers: bool = False,
    skip: Union[str, Sequence[str]] = (),
    inline_functions: bool = False,
    require_end_to_end: bool = False,
    standalone: bool = False,
    also_writes: Sequence[Tuple[Union[str, "os.PathLike[str]"], str]] = (),
    options: Optional[FoldFileOptions] = None,
) -> FoldReport:
    """Load, fold, verify (unless verify=False) and atomically write a model; return the report.

    Verification compares outputs and shared intermediates (verify_options: a bnfold.options.VerifyOptions, or a mapping
    of its fields). The options may instead come made, as one bnfold.options.FoldFileOptions (`options`; then no keyword
    may set one too). When no size of a dynamic input dim lets the original run, the check is skipped and the report
    says why (report.verification_skipped), unless require_end_to_end, which raises UnresolvedShapeError instead.

    fold_input_initializers, keep_input_initializers, skip, inline_functions and standalone fold as bnfold.fold does. No
    file it reads (the model, its external data files) is replaced, unless `destination` names the model itself and
    overwrite=True (then its data file may be replaced too); files are compared by identity (bnfold.file_identity), and
    a refusal (OutputError) comes before anything is written. also_writes: (path, what) of files the caller will write
    after the call (a report), checked the same way. A model read from a pipe (`/dev/stdin`) is read whole into memory.
    When verification fails the output is not written (unless force=True) and VerificationFailed is raised, carrying
    `.result` and `.report`.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ArgumentTypeError("source", f"expected a path (str or os.PathLike), got {type(source).__name__}")
    source = Path(source)
    # Every keyword that sets an option is a field of one layer's options object: made (and checked) here, once.
    arguments = dict(locals())
    options = FoldFileOptions.of(options, {name: arguments[name] for name in FoldFileOptions.keyword_names()})
    dry_run, overwrite = options.file.dry_run, options.file.overwrite
    if destination is not None and not isinstance(destination, (str, os.PathLike)):
        raise ArgumentTypeError("destination", "expected a path (str or os.PathLike) or None")
    if destination is None and not dry_run:
        raise UsageError("no output path: pass -o/--output (or --dry-run to only report)")
    writes = _planned_writes(destination, dry_run, data_file=False, also_writes=also_writes)
    replaceable = [(destination, source)] if overwrite and destination is not None else []
    try:
        refuse_overlaps([(source, "the input model")], writes, replaceable=replaceable)
    except OutputError:
        if not overwrite and writes and identity(writes[0][0]) == identity(source):
            raise OutputError(f"{destination} is the input file; pass --overwrite to replace it") from None
        raise
    started = time.perf_counter()
    data = read_stream(source) if is_stream(source) else None
    with holding(source) as held:
        return _fold_file(source, destination, held, data, started, options, also_writes=also_writes)


def _planned_writes(destination, dry_run: bool, *, data_file: bool, also_writes) -> list:
    """(path, what) of every file a fold_file call writes: the model, its data file, the caller's own."""
    writes = [] if dry_run or destination is None else [(destination, "the output model")]
    if writes and data_file:
        writes.append((data_file_path(destination), "the output's external data file"))
    return writes + [(path, what) for path, what in also_writes]


def _fold_file(source: Path, destination, held, data: Optional[bytes], started: float, options: FoldFileOptions,
               *, also_writes) -> FoldReport:
    """fold_file's work, with large initializers held in the file (`held`: see bnfold.tensor_store) from load to
    save."""
    file: FileOptions = options.file
    verify, dry_run, external_data = file.verify, file.dry_run, file.external_data
    data_files: list = []
    model = load_checked_model(source, check=file.check, held=held, data=data, data_files=data_files)
    writes_data = external_data or (external_data is None and exceeds_protobuf_limit(model))
    reads = [(source, "the input model"), *((path, f"external data of {source}") for path in data_files)]
    writes = _planned_writes(destination, dry_run, data_file=bool(writes_data), also_writes=also_writes)
    same = file.overwrite and destination is not None and identity(destination) == identity(source)
    replaceable = []
    if same:  # --overwrite of the model itself: its data file may be replaced by the output's
        replaceable = [(destination, source)]
        if writes_data:
            replaceable += [(data_file_path(destination), data) for data in data_files]
    refuse_overlaps(reads, writes, replaceable=replaceable)
    folded, report = fold_model(model, options.fold, inplace=True,
                                reload=lambda: load_model(source, held=held, data=data))
    report.source = str(source)
    report.destination = None if destination is None else str(destination)
    checked = verify and report.changed
    # While the end-to-end check runs, the output is written (and fsynced) to its temporary file beside it; it is
    # renamed into place only once the check has passed.
    pending = PendingSave(folded, destination, external_data=external_data) if checked and not dry_run else None
    try:
        if pending is not None:
            pending.start()
        if checked:
            checking = time.perf_counter()
            try:
                reference = source if data is None else load_model(source, data=data)
                _check_end_to_end(reference, folded, report, started, options.verification, file)
            finally:
                report.verify_s = time.perf_counter() - checking
        if pending is not None:
            pending.commit()
            pending = None
            report.written = True
        elif not dry_run:
            save_model(folded, destination, external_data=external_data)
            report.written = True
    finally:
        if pending is not None:
            pending.discard()
    report.elapsed_s = time.perf_counter() - started
    return report


def _check_end_to_end(source: Union[Path, onnx.ModelProto], folded: onnx.ModelProto, report: FoldReport, started: float,
                      verify_options: VerifyOptions, file: FileOptions) -> None:
    """Compare the folded model with the file it came from (report.verification); raise VerificationFailed when
    they differ, unless force."""
    from .checking.end_to_end import verify as verify_models

    options = verify_options.keywords()
    options.setdefault("fold_labels", {d.output: d.label for d in [*report.folded, *report.decomposed]
                                       if d.folded and d.output})
    options.setdefault("rewritten", [name for d in [*report.folded, *report.decomposed] if d.folded
                                     for name in d.rewritten])
    try:
        reference = source if isinstance(source, onnx.ModelProto) else str(source)
        report.verification = verify_models(reference, folded, candidate_label="folded model (in memory)",
                                            **options)
    except UnresolvedShapeError as error:
        if file.require_end_to_end:
            raise UnresolvedShapeError(f"cannot verify the fold end to end: {error}") from None
        report.verification_skipped = f"end-to-end check skipped: {error}"
    except (UsageError, InvalidModelError) as error:
        raise type(error)(f"cannot verify the fold: {error} (or skip the check with --no-verify)") from None
    if report.verification is not None and not report.verification.passed and not file.force:
        report.elapsed_s = time.perf_counter() - started
        error = VerificationFailed("folded model differs from the original beyond tolerance; nothing written "
                                   "(--force writes it anyway)", report.verification)
        error.report = report
        raise error
