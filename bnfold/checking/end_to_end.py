"""The end-to-end check: run the original and the folded model in ONNX Runtime on the same inputs and compare
every output and every intermediate tensor both models share (see checking.intermediates), each with a tolerance
that follows its own data (see checking.compare).

    result = bnfold.verify("model.onnx", "folded.onnx")
    assert result.passed, result.summary()

Inputs are chosen without the user where the model leaves them open (see checking.feeds); when no size of a
dynamic dim lets the original run, UnresolvedShapeError says so and how to give shapes.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UsageError
from .tolerance import Tolerance, check_tolerance
from .result import VerifyResult, shape_text

if TYPE_CHECKING:  # onnx is imported lazily
    import onnx

ModelLike = Union[str, "os.PathLike[str]", "onnx.ModelProto"]
ShapesArg = Union[None, str, Mapping[Optional[str], Sequence[int]], Sequence[str]]


def _load(model: ModelLike, default_label: str, held: contextlib.ExitStack):
    """(ModelProto, what to give ORT, label). A model read from a path holds its large initializers in the file
    (bnfold.tensor_store) until `held` closes, and ORT gets it weightless, reading those from the file itself (five
    times faster than ORT parsing the file: 0.4 s against 2.1 s for a 507 MiB model). A model with external data
    files, or past protobuf's 2 GiB limit, goes to ORT by its path: ORT reads its data files itself."""
    from ..loading import holding, is_stream, load_model
    from ..tensors import exceeds_protobuf_limit

    if isinstance(model, (str, os.PathLike)):
        data_files: list = []
        loaded = load_model(model, held=held.enter_context(holding(model)), data_files=data_files)
        # A pipe is read once, here: ORT gets the parsed model.
        by_path = not is_stream(model) and (bool(data_files) or exceeds_protobuf_limit(loaded))
        return loaded, os.fspath(model) if by_path else loaded, os.fspath(model)
    if not hasattr(model, "graph"):
        raise UsageError(f"{default_label} must be a path or an onnx.ModelProto, got {type(model).__name__}")
    return model, model, default_label


def _input_problems(reference_specs, candidate_specs, feeds: Mapping[str, np.ndarray]) -> List[str]:
    """Why the candidate cannot take the reference's inputs, if it cannot."""
    candidate_by_name = {spec.name: spec for spec in candidate_specs}
    reference_names = [spec.name for spec in reference_specs]
    problems = []
    if set(candidate_by_name) != set(reference_names):
        problems.append(
            f"inputs differ: reference has {reference_names}, candidate has {list(candidate_by_name)}"
        )
    for spec in reference_specs:
        other = candidate_by_name.get(spec.name)
        if other is None:
            continue
        if other.dtype != spec.dtype:
            problems.append(
                f"input {spec.name!r} dtype differs: reference {spec.dtype.name}, candidate {other.dtype.name}"
            )
        elif other.dims and not _fits(other.dims, feeds[spec.name].shape):
            problems.append(
                f"input {spec.name!r}: candidate declares shape {_dims_text(other.dims)}, "
                f"which does not accept the reference's {shape_text(feeds[spec.name].shape)}"
            )
    return problems


def _fits(dims, shape: Tuple[int, ...]) -> bool:
    return len(dims) == len(shape) and all(not isinstance(d, int) or d == s for d, s in zip(dims, shape))


def _dims_text(dims) -> str:
    return "x".join(str(d) if d is not None else "?" for d in dims)


def _check_provided(specs, provided: Mapping[str, np.ndarray]) -> None:
    """User data must fit the model's declared input shapes; ORT's own message would not say which input."""
    for spec in specs:
        if spec.name in provided and spec.dims and not _fits(spec.dims, np.shape(provided[spec.name])):
            raise UsageError(
                f"data for input {spec.name!r} has shape {shape_text(np.shape(provided[spec.name]))}, "
                f"but the model declares {_dims_text(spec.dims)}"
            )


def _shapes_argument(input_shapes: ShapesArg) -> Optional[Dict[Optional[str], Tuple[int, ...]]]:
    """input_shapes as {name or None: dims}: a 'name:1x3x5x5' string, a list of them, or a mapping."""
    from ..inputs import parse_shape_specs

    if input_shapes is None:
        return None
    if isinstance(input_shapes, str):
        input_shapes = [input_shapes]
    if isinstance(input_shapes, Mapping):
        shapes = {}
        for name, dims in input_shapes.items():
            if isinstance(dims, str) or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                                for d in np.atleast_1d(np.asarray(dims, dtype=object))):
                raise UsageError(f"input_shapes[{name!r}] must be a sequence of integers, got {dims!r}")
            dims = tuple(int(d) for d in dims)
            if any(d < 0 for d in dims):
                raise UsageError(f"input_shapes[{name!r}] has a negative dimension: {dims}")
            shapes[name] = dims
        return shapes
    if isinstance(input_shapes, (list, tuple)) and all(isinstance(text, str) for text in input_shapes):
        return parse_shape_specs(input_shapes)
    raise UsageError("input_shapes must be 'name:D0xD1x...', a list of such strings, or {name: shape}, "
                     f"got {type(input_shapes).__name__}")


def _files_argument(input_files) -> List[str]:
    if input_files is None:
        return []
    if isinstance(input_files, (str, os.PathLike)):
        return [os.fspath(input_files)]
    if isinstance(input_files, (list, tuple)) and all(isinstance(f, (str, os.PathLike)) for f in input_files):
        return [os.fspath(f) for f in input_files]
    raise UsageError(f"input_files must be a path or a list of paths, got {type(input_files).__name__}")


def _check_arguments(runs, seed, inputs) -> None:
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise UsageError(f"runs must be an integer of at least 1, got {runs!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    if inputs is not None and not isinstance(inputs, Mapping):
        raise UsageError(f"inputs must be {{input name: array}}, got {type(inputs).__name__}")


def verify(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    input_shapes: ShapesArg = None,
    inputs: Optional[Mapping[str, np.ndarray]] = None,
    input_files: Union[str, "os.PathLike[str]", Sequence[str]] = (),
    atol: Tolerance = None,
    rtol: Tolerance = None,
    runs: int = 1,
    seed: int = 0,
    ort_opt_level: str = "disable",
    candidate_label: Optional[str] = None,
    intermediates: Union[bool, str] = False,
    fold_labels: Optional[Mapping[str, str]] = None,
    rewritten: Sequence[str] = (),
) -> VerifyResult:
    """Run both models in ONNX Runtime CPU on the same inputs and compare every output by name.

    Inputs not given (as arrays in `inputs` or files in `input_files`: .npz by input name, NAME:file.npy) are seeded
    random data; run i uses seed + i. Dynamic dims: `input_shapes` ({name: shape}, "name:1x3x224x224" or a list of such
    strings), else chosen as checking.feeds describes (larger sizes where an output carries no signal:
    checking.evidence); the shapes used and each output's range are in the result. A bool input deciding an If runs both
    ways. When every input is given, one run is made. intermediates: True also compares every tensor both models share
    by name and meaning (checking.intermediates); "boundaries" compares the fold boundaries among them that fit in one
    chunk (spread over the graph, the last always), and sweeps the rest only when something fails, to localize it. The
    first tensor outside tolerance is named, and, through `fold_labels` ({tensor: BN label}) or the reference's
    BatchNormalization nodes, the BN fold behind it. `rewritten` names tensors to leave out: ones a fold kept by name
    but gave new values (the fold command passes them from its report). Intermediates are exposed at most
    pair.CHUNK_BYTES at a time, so memory stays bounded. Default tolerances follow the data and the dtype flowing into
    each tensor; a tensor outside them is judged again, allowing for the reference's own rounding noise (its distance
    from a float64 evaluation: checking.noise) before it fails. ORT graph optimizations are off by default: ORT would
    otherwise fuse Conv+BN in the reference itself. Returns the result for mismatches; raises a BnfoldError for bad
    usage or a model that cannot be loaded or run (UnresolvedShapeError when no size of a dynamic dim lets the reference
    run). Models are labelled by their path, or "reference"/"candidate" (candidate_label overrides the latter).
    """
    from ..inputs import graph_inputs, load_input_files
    from . import pair
    from .evidence import output_evidence
    from .feeds import branch_inputs, branch_variants, make_feeds, plan_shapes
    from .intermediates import element_types, shared_tensors, spread_within, tensor_sizes
    from .noise import flowing_dtypes
    from .pair import ModelPair
    from .trials import feed_sets, first_run

    _check_arguments(runs, seed, inputs)
    if intermediates not in (True, False, "boundaries"):
        raise UsageError(f"intermediates must be True, False or 'boundaries', got {intermediates!r}")
    input_shapes = _shapes_argument(input_shapes)
    input_files = _files_argument(input_files)
    with contextlib.ExitStack() as held:  # models read from paths hold their weights in the file until it closes
        reference_model, reference_source, reference_label = _load(reference, "reference", held)
        candidate_model, candidate_source, candidate_label = _load(candidate, candidate_label or "candidate", held)
        output_names = [value.name for value in reference_model.graph.output]
        check_tolerance(atol, "atol", output_names + [v.name for v in candidate_model.graph.output])
        check_tolerance(rtol, "rtol", output_names + [v.name for v in candidate_model.graph.output])
        reference_specs = graph_inputs(reference_model)
        provided = dict(load_input_files(input_files, reference_specs)) if input_files else {}
        provided.update(inputs or {})
        unknown = set(provided) - {spec.name for spec in reference_specs}
        if unknown:
            raise UsageError(
                f"input data names unknown input(s) {sorted(unknown)}; the model's inputs are: "
                f"{[spec.name for spec in reference_specs]}"
            )
        _check_provided(reference_specs, provided)
        missing = [spec for spec in reference_specs if spec.name not in provided]
        wanted = None
        if input_shapes:
            wanted = {name: shape for name, shape in input_shapes.items() if name not in provided}
        plan = plan_shapes(reference_model, missing, wanted)
        branches = [name for name in branch_inputs(reference_model, reference_specs) if name not in provided]
        if not missing:
            runs = 1

        elem_types = element_types(reference_model)
        shared = shared_tensors(reference_model, candidate_model, rewritten, elem_types) if intermediates else None
        check = ModelPair(reference_model, reference_source, reference_label, candidate_model, candidate_source,
                          candidate_label, ort_opt_level, atol, rtol, output_names,
                          flowing_dtypes(reference_model, elem_types), elem_types)
        if plan.groups:
            shapes, notes, first_feeds, evidence, texture = first_run(check, reference_specs, plan, provided, seed,
                                                                      branches)
        else:  # nothing to choose: the first comparison run is the first run
            shapes, notes, evidence, texture = next(plan.candidates())[0], list(plan.notes), None, "noise"
            first_feeds = branch_variants(make_feeds(reference_specs, shapes, provided, seed), branches)[0]
        problems = _input_problems(reference_specs, graph_inputs(candidate_model), first_feeds)
        if problems:
            return VerifyResult([], reference_label, candidate_label, problems=problems)
        check.feed_sets = feed_sets(reference_specs, shapes, provided, seed, runs, branches, first_feeds, texture)
        check.shapes = {spec.name: tuple(np.shape(first_feeds[spec.name])) for spec in reference_specs}
        swept = [] if shared is None else list(shared.names)
        if intermediates == "boundaries":
            boundaries = [name for name in swept if name in shared.boundaries]
            swept = spread_within(boundaries, tensor_sizes(reference_model, boundaries, check.shapes), pair.CHUNK_BYTES)
        result = check.compare(swept, with_outputs=True)
        if shared is not None and len(swept) < len(shared.names) and not result.passed:
            # Something failed: every other tensor both models share says where it started.
            rest = [name for name in shared.names if name not in set(swept)]
            result.intermediates = _in_order(result.intermediates + check.compare(rest).intermediates, shared.order)
        result.runs = runs
        result.seed = None if not missing else seed
        result.ort_opt_level = ort_opt_level
        result.input_shapes = check.shapes
        result.shape_notes = notes
        result.evidence = evidence if evidence is not None else \
            output_evidence(check.first_outputs, atol, rtol, check.flowing)
        result.branch_inputs = {name: [True, False] for name in branches}
        result.intermediates_checked = shared is not None
        if shared is not None:
            result.intermediates_scope = "all" if len(result.intermediates) >= len(shared.names) else "boundaries"
            _locate_divergence(result, shared, fold_labels)
        return result


def _in_order(comparisons, order: Mapping[str, int]):
    return sorted(comparisons, key=lambda item: order.get(item.name, len(order)))


def _locate_divergence(result: VerifyResult, shared, fold_labels) -> None:
    """Name the first tensor outside tolerance in the reference's graph order, and the BN fold behind it."""
    tensors = [*result.outputs, *result.intermediates]
    failing = [t for t in tensors if not t.passed and t.name in shared.order]
    if not failing:
        return
    first = min(failing, key=lambda t: shared.order[t.name])
    from .intermediates import divergence_source

    result.first_divergence = first.name
    result.divergence_source = divergence_source(first.name, shared, fold_labels)


