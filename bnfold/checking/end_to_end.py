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

from ..errors import InvalidModelError, UnresolvedShapeError, UsageError
from .compare import Tolerance, check_tolerance, compare_intermediates, compare_outputs, is_default
from .result import VerifyResult, shape_text

# Bytes of intermediate tensors one run of each model exposes at most: the check's memory beyond ONNX Runtime's
# own stays about twice this, whatever the model's size.
CHUNK_BYTES = 32 << 20

if TYPE_CHECKING:  # onnx is imported lazily
    import onnx

ModelLike = Union[str, "os.PathLike[str]", "onnx.ModelProto"]
ShapesArg = Union[None, str, Mapping[Optional[str], Sequence[int]], Sequence[str]]


def _load(model: ModelLike, default_label: str, held: contextlib.ExitStack):
    """(ModelProto, what to give ORT, label): paths keep their path for ORT, so models over 2 GiB still load. A
    model read from a path holds its large initializers in the file (bnfold.held) until `held` closes."""
    from ..held import holding
    from ..loading import load_model

    if isinstance(model, (str, os.PathLike)):
        return load_model(model, held=held.enter_context(holding(model))), os.fspath(model), os.fspath(model)
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

    Inputs not given (as arrays in `inputs` or files in `input_files`: .npz by input name, NAME:file.npy) are
    seeded random data; run i uses seed + i. Dynamic dims: `input_shapes` ({name: shape}, "name:1x3x224x224"
    or a list of such strings), else chosen as checking.feeds describes (larger sizes where an output carries no
    signal: checking.evidence); the shapes used and each output's range are in the result.
    A bool input deciding an If runs both ways. When every input is given, one run is made.
    intermediates: True also compares every tensor both models share by name and meaning
    (checking.intermediates); "boundaries" compares the fold boundaries among them that fit in CHUNK_BYTES (spread
    over the graph, the last always), and sweeps the rest only when something fails, to localize it. The first tensor outside tolerance is named, and, through `fold_labels`
    ({tensor: BN label}) or the reference's BatchNormalization nodes, the BN fold behind it. `rewritten` names
    tensors to leave out: ones a fold kept by name but gave new values (the fold command passes them from its
    report). Intermediates are exposed at most CHUNK_BYTES at a time, so memory stays bounded.
    Default tolerances follow the data and the dtype flowing into each tensor; a tensor outside them is judged
    again, allowing for the reference's own rounding noise (its distance from a float64 evaluation: checking.noise)
    before it fails.
    ORT graph optimizations are off by default: ORT would otherwise fuse Conv+BN in the reference itself.
    Returns the result for mismatches; raises a BnfoldError for bad usage or a model that cannot be loaded or run
    (UnresolvedShapeError when no size of a dynamic dim lets the reference run).
    Models are labelled by their path, or "reference"/"candidate" (candidate_label overrides the latter).
    """
    from ..inputs import graph_inputs, load_input_files
    from .evidence import output_evidence
    from .feeds import branch_inputs, branch_variants, make_feeds, plan_shapes
    from .intermediates import element_types, shared_tensors, spread_within, tensor_sizes
    from .noise import flowing_dtypes

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
        check = _Check(reference_model, reference_source, reference_label, candidate_model, candidate_source,
                       candidate_label, ort_opt_level, atol, rtol, output_names,
                       flowing_dtypes(reference_model, elem_types), elem_types)
        if plan.groups:
            shapes, notes, first_feeds, evidence, texture = _first_run(check, reference_specs, plan, provided, seed,
                                                                       branches)
        else:  # nothing to choose: the first comparison run is the first run
            shapes, notes, evidence, texture = next(plan.candidates())[0], list(plan.notes), None, "noise"
            first_feeds = branch_variants(make_feeds(reference_specs, shapes, provided, seed), branches)[0]
        problems = _input_problems(reference_specs, graph_inputs(candidate_model), first_feeds)
        if problems:
            return VerifyResult([], reference_label, candidate_label, problems=problems)
        check.feed_sets = _feed_sets(reference_specs, shapes, provided, seed, runs, branches, first_feeds, texture)
        check.shapes = {spec.name: tuple(np.shape(first_feeds[spec.name])) for spec in reference_specs}
        swept = [] if shared is None else list(shared.names)
        if intermediates == "boundaries":
            boundaries = [name for name in swept if name in shared.boundaries]
            swept = spread_within(boundaries, tensor_sizes(reference_model, boundaries, check.shapes), CHUNK_BYTES)
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


def _feed_sets(specs, shapes, provided, seed, runs, branches, first_feeds, texture) -> List[Dict[str, np.ndarray]]:
    """Every feed set the check runs: `runs` seeded draws, each with every If-deciding input both ways."""
    from .feeds import branch_variants, make_feeds

    feed_sets = []
    for run_index in range(runs):
        base = first_feeds if run_index == 0 else make_feeds(specs, shapes, provided, seed + run_index, texture)
        variants = branch_variants(base, branches)
        feed_sets.extend([first_feeds, *variants[1:]] if run_index == 0 else variants)
    return feed_sets


def _in_order(comparisons, order: Mapping[str, int]):
    return sorted(comparisons, key=lambda item: order.get(item.name, len(order)))


class _Check:
    """The two models of one check, the feeds they run on, and how tensors are compared: at most CHUNK_BYTES of
    exposed intermediates per run of each model, and each failure judged again against the reference's noise."""

    def __init__(self, reference, reference_source, reference_label, candidate, candidate_source, candidate_label,
                 opt_level, atol, rtol, output_names, flowing, elem_types):
        self.models = {"reference": (reference, reference_source, reference_label),
                       "candidate": (candidate, candidate_source, candidate_label)}
        self.opt_level, self.atol, self.rtol = opt_level, atol, rtol
        self.output_names, self.flowing, self.elem_types = output_names, flowing, elem_types
        self.feed_sets: List[Dict[str, np.ndarray]] = []
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.first_outputs: Dict[str, object] = {}  # the reference's outputs on the first feed set

    def runner(self, which: str, extra: Sequence[str] = (), opt_level: Optional[str] = None):
        from .run import Runner

        model, source, label = self.models[which]
        if opt_level is not None and opt_level != self.opt_level:
            label = f"{label} (ORT level {opt_level})"
        return Runner(model, source, label, opt_level=opt_level or self.opt_level,
                      extra={name: self.elem_types[name] for name in extra})

    def compare(self, names: Sequence[str], with_outputs: bool = False) -> VerifyResult:
        """Compare `names` (and the outputs) over every feed set; failures under default tolerances are judged
        again against the reference's own rounding noise."""
        from .intermediates import chunks_by_bytes, tensor_sizes

        sizes = tensor_sizes(self.models["reference"][0], names, self.shapes)
        chunks = chunks_by_bytes(names, sizes, CHUNK_BYTES)
        result = None
        for index, chunk in enumerate(chunks or [[]]):
            part = self._run_and_compare(chunk, with_outputs and index == 0)
            result = part if result is None else _joined(result, part)
        failing = [item.name for item in [*result.outputs, *result.intermediates]
                   if not item.passed and item.problem is None and is_default(self.atol, item.name)]
        if failing:
            self._judge_against_noise(result, failing)
        return result

    def _run_and_compare(self, chunk: Sequence[str], with_outputs: bool, exact: bool = False) -> VerifyResult:
        from .noise import exact_values

        labels = (self.models["reference"][2], self.models["candidate"][2])
        runners = [self.runner("reference", chunk), self.runner("candidate", chunk)]
        outputs = self.output_names if with_outputs else []
        result = None
        for feeds in self.feed_sets:
            values = [runner.run(feeds) for runner in runners]
            reference_outputs = {name: values[0][name] for name in outputs if name in values[0]}
            if with_outputs and not self.first_outputs:
                self.first_outputs = reference_outputs
            candidate_outputs = {} if not with_outputs else \
                {name: value for name, value in values[1].items() if name not in chunk or name in outputs}
            exact_ones = exact_values(self.models["reference"][0], feeds, [*outputs, *chunk]) if exact else None
            part = compare_outputs(reference_outputs, candidate_outputs, atol=self.atol, rtol=self.rtol,
                                   reference_label=labels[0], candidate_label=labels[1], flowing=self.flowing,
                                   exact=exact_ones)
            part.intermediates = compare_intermediates(list(chunk), values[0], values[1], atol=self.atol,
                                                       rtol=self.rtol, flowing=self.flowing, exact=exact_ones)
            result = part if result is None else result.merged(part)
            del values, exact_ones
        return result

    def _judge_against_noise(self, result: VerifyResult, failing: Sequence[str]) -> None:
        """Compare the failing tensors again, allowing for the reference's own distance from its exact (float64)
        evaluation (see checking.noise), and keep the new verdicts. Where it cannot be evaluated, they stand."""
        outputs = [name for name in failing if name in self.output_names]
        inside = [name for name in failing if name not in self.output_names]
        again = self._run_and_compare(inside, with_outputs=bool(outputs), exact=True)
        judged = {item.name: item for item in [*again.outputs, *again.intermediates] if item.name in failing}
        result.outputs = [judged.get(item.name, item) for item in result.outputs]
        result.intermediates = [judged.get(item.name, item) for item in result.intermediates]


def _joined(first: VerifyResult, second: VerifyResult) -> VerifyResult:
    first.outputs += second.outputs
    first.intermediates += second.intermediates
    first.problems += [problem for problem in second.problems if problem not in first.problems]
    return first


def choose_inputs(model, specs, plan, provided, seed: int, label: str = "model"):
    """(feeds, notes): the inputs the check would choose for `model` where `plan` (checking.feeds.plan_shapes) leaves
    dims open, found by running it as the check's first run does; for `bnfold bench`, which times on them."""
    from .intermediates import element_types
    from .noise import flowing_dtypes

    types = element_types(model)
    check = _Check(model, model, label, model, model, label, "disable", None, None,
                   [value.name for value in model.graph.output], flowing_dtypes(model, types), types)
    _shapes, notes, feeds, _evidence, _texture = _first_run(check, specs, plan, provided, seed, [])
    return feeds, notes


def _first_run(check: _Check, specs, plan, provided, seed, branches):
    """Find shapes the reference runs with, trying sizes for open dims, then larger ones and image-like inputs
    (checking.feeds) while an output carries no signal; return the shapes, notes, the feeds, each output's evidence
    (checking.evidence) and the input texture, for the first try where the fewest outputs lack signal."""
    from .evidence import lacking, output_evidence
    from .feeds import EVIDENCE_SIZES, TEXTURES, TRIAL_SIZES, branch_variants, make_feeds

    runner = check.runner("reference")
    failures, ran = [], []
    best = None
    for texture in TEXTURES:
        # White noise: every trial size until one runs, then the larger ones; blocks: the sizes that ran.
        sizes = TRIAL_SIZES + EVIDENCE_SIZES if texture == TEXTURES[0] else tuple(ran)
        for shapes, chosen in plan.candidates(sizes):
            size = next(iter(chosen.values()), None)
            if ran and texture == TEXTURES[0] and size not in EVIDENCE_SIZES:
                continue  # a size ran: only the larger ones can add signal
            feeds = branch_variants(make_feeds(specs, shapes, provided, seed, texture), branches)[0]
            try:
                values = runner.run(feeds, quiet=bool(plan.groups))
            except InvalidModelError as error:
                failures.append((size, str(error)))
                continue
            ran.append(size)
            outputs = {name: values[name] for name in check.output_names if name in values}
            evidence = output_evidence(outputs, check.atol, check.rtol, check.flowing)
            del values, outputs
            if best is None or lacking(evidence) < lacking(best[3]):
                best = (shapes, chosen, feeds, evidence, texture)
            if not lacking(evidence):
                break
        if best is None or not lacking(best[3]):
            break
    if best is None:
        give = " ".join(f"--input-shape {name}:" + "x".join(_placeholder(d) for d in dims)
                        for name, dims in plan.dims.items() if any(isinstance(d, str) for d in dims))
        last_error = failures[-1][1] if failures else ""
        raise UnresolvedShapeError(
            f"no size for the dynamic dim(s) {', '.join(plan.groups)} lets the original model run (tried "
            f"{', '.join(str(size) for size in TRIAL_SIZES + EVIDENCE_SIZES)}; last error: {last_error}); "
            f"give the shapes, e.g. {give}"
        )
    shapes, chosen, feeds, evidence, texture = best
    notes = list(plan.notes)
    size = next(iter(chosen.values()))
    smaller = sorted({str(tried) for tried, _ in failures if tried < ran[0]}, key=int)
    tried = f" ({', '.join(smaller)} did not run)" if smaller else ""
    larger = " (an output carried no signal at the first size that ran)" if size != ran[0] else ""
    notes.append("dynamic dims chosen: " + ", ".join(f"{group}={size}" for group in chosen) + tried + larger
                 + "; --input-shape sets them")
    if texture != TEXTURES[0]:
        notes.append(f"image inputs: random {texture} (white noise left an output with no signal)")
    return shapes, notes, feeds, evidence, texture


def _placeholder(dim) -> str:
    """A dim as --input-shape wants it in an example: its size, its symbolic name, or N for an unnamed one."""
    if not isinstance(dim, str):
        return str(dim)
    return "N" if "[" in dim else dim


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


