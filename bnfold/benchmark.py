"""Latency of ONNX models on ONNX Runtime execution providers: the original vs the folded model, same inputs.

    result = bnfold.bench(["model.onnx", "folded.onnx"], providers=["cpu", "cuda"])
    print(result.table())

Each model x provider x graph-optimization level is one row: session creation time, the first run on its own
(cuDNN's convolution algorithm search happens there), then `iterations` timed runs after `warmup` untimed ones.
The default levels are "disable" (the raw gain of folding) and "all" (the gain over ORT's own default, which
already fuses Conv+BN when it builds the session). Inputs are planned as the fold's end-to-end check plans them
(bnfold.checking.feeds): dynamic dims are chosen by running the first model. The result, its table and plot are
in bnfold.bench_result. onnxruntime is imported only when needed.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import PurePath
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from .bench_result import (JSON_SCHEMA, RATIO_STATISTIC, BenchResult, BenchRow, LatencyStats,  # noqa: F401
                           import_matplotlib_figure, plot, summarize)
from .errors import ProviderError, UsageError
from .inputs import graph_inputs, parse_shape_specs
from .loading import load_model
from .options import FoldOptions
from .runtime import OPT_LEVELS, import_onnxruntime, make_session, provider_name

DEFAULT_OPT_LEVELS = ("disable", "all")
CUDNN_CONV_ALGO_SEARCH_CHOICES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
# Providers whose tensors live in CUDA memory: timed through IOBinding so host<->device copies stay out of the figure.
CUDA_MEMORY_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

ModelLike = Union[str, "os.PathLike[str]", onnx.ModelProto]
Progress = Callable[[int, int, str], None]


def default_intra_op_threads() -> int:
    """The cores this process may run on: its CPU affinity (taskset, cpusets) where the OS reports it."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_runner(session, feeds: Mapping[str, np.ndarray], device: Optional[str] = None) -> Callable[[], float]:
    """A function that runs the model once and returns its wall time in seconds.

    device=None times `session.run` with host arrays. device="cuda" binds the inputs in device memory once and the
    outputs to the device (IOBinding), and synchronizes after each run, so the figure is the model alone.
    """
    if device is None:
        output_names = [output.name for output in session.get_outputs()]

        def run_on_host() -> float:
            start = time.perf_counter()
            session.run(output_names, feeds)
            return time.perf_counter() - start

        return run_on_host

    ort = import_onnxruntime()
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, device, 0)
    binding.synchronize_inputs()

    def run_bound() -> float:
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return time.perf_counter() - start

    return run_bound


def time_runs(run_once: Callable[[], float], warmup: int, iterations: int) -> Tuple[float, List[float]]:
    """(first run's seconds, the timed runs' seconds): `warmup` untimed runs, then `iterations` timed ones.

    The garbage collector is paused meanwhile, as timeit does, so its pauses do not land in random runs.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        durations = [run_once() for _ in range(warmup + iterations)]
    finally:
        if gc_was_enabled:
            gc.enable()
    return durations[0], durations[warmup:]


def model_labels(paths: Sequence[Union[str, "os.PathLike[str]"]]) -> List[str]:
    """For each path, the shortest tail of it that no other path given ends with: `a/x.onnx` and `b/x.onnx` are
    labelled so, `y.onnx` stays `y.onnx`. The same path given twice gets `#N` (its position) on the repeat."""
    parts = [PurePath(os.path.normpath(os.fspath(path))).parts for path in paths]
    labels: List[str] = []
    for index, mine in enumerate(parts):
        others = [theirs for theirs in parts if theirs != mine]
        length = next((n for n in range(1, len(mine) + 1) if all(theirs[-n:] != mine[-n:] for theirs in others)),
                      len(mine))
        label = str(PurePath(*mine[-length:])) if mine else os.fspath(paths[index])
        labels.append(label if label not in labels else f"{label}#{index + 1}")
    return labels


def _labelled_models(models) -> List[Tuple[str, onnx.ModelProto]]:
    """(label, ModelProto) for each of paths, ModelProtos, or (label, path-or-model) pairs; labels made unique."""
    if isinstance(models, (str, os.PathLike, onnx.ModelProto)):
        models = [models]
    models = list(models)
    paths = [item for item in models if isinstance(item, (str, os.PathLike))]
    path_labels = iter(model_labels(paths))
    labelled = []
    for index, item in enumerate(models):
        if isinstance(item, tuple):
            label, model = item
        elif isinstance(item, onnx.ModelProto):
            label, model = f"model{index + 1}", item
        else:
            label, model = next(path_labels), item
        if not isinstance(model, onnx.ModelProto):
            model = load_model(model)
        if label in {existing for existing, _ in labelled}:
            label = f"{label}#{index + 1}"
        labelled.append((str(label), model))
    if not labelled:
        raise UsageError("bench needs at least one model")
    return labelled


def plan_feeds(model: onnx.ModelProto, shapes: Mapping[Optional[str], Tuple[int, ...]],
               provided: Optional[Mapping[str, np.ndarray]], seed: int, label: str = "model"
               ) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """The feeds every model is timed on, and notes on how their shapes were chosen: the same plan as the fold's
    end-to-end check (bnfold.checking.feeds.plan_shapes); dims it leaves open are found by running `model`
    with ONNX Runtime at each trial size (the check's own trial run), and UnresolvedShapeError names the
    option when none runs."""
    from .checking.trials import choose_inputs
    from .checking.feeds import make_feeds, plan_shapes

    specs = graph_inputs(model)
    provided = dict(provided or {})
    missing = [spec for spec in specs if spec.name not in provided]
    wanted = {name: shape for name, shape in shapes.items() if name not in provided}
    plan = plan_shapes(model, missing, wanted)
    if not plan.groups:
        planned, _chosen = next(plan.candidates())
        return make_feeds(specs, planned, provided, seed), list(plan.notes)
    return choose_inputs(model, specs, plan, provided, seed, label)


def _check_same_inputs(labelled: Sequence[Tuple[str, onnx.ModelProto]]) -> None:
    """Every model must take the inputs of the first, since all of them are fed the same arrays."""
    first_label, first_model = labelled[0]
    expected = [(spec.name, spec.dtype) for spec in graph_inputs(first_model)]
    for label, model in labelled[1:]:
        found = [(spec.name, spec.dtype) for spec in graph_inputs(model)]
        if found != expected:
            raise UsageError(
                f"{label} takes inputs {[f'{n}:{d}' for n, d in found]} but {first_label} takes "
                f"{[f'{n}:{d}' for n, d in expected]}; bench feeds the same inputs to every model"
            )


def _provider_spec(provider: str, cudnn_conv_algo_search: str):
    """What make_session takes for one provider: CUDA gets its cuDNN convolution algorithm search option."""
    if provider_name(provider) == "CUDAExecutionProvider":
        return (provider, {"cudnn_conv_algo_search": cudnn_conv_algo_search})
    return provider


def _fallback_warning(provider: str, active: Sequence[str]) -> Optional[str]:
    wanted = provider_name(provider)
    if wanted in active:
        return None
    return f"{wanted} is unavailable or was not activated; ran on {active[0] if active else 'nothing'} instead"


def bench(
    models,
    *,
    fold: bool = False,
    fold_options: Union[None, Mapping[str, object], FoldOptions] = None,
    providers: Sequence[str] = ("cpu",),
    opt_levels: Sequence[str] = DEFAULT_OPT_LEVELS,
    warmup: int = 10,
    iterations: int = 100,
    input_shapes=None,
    inputs: Optional[Mapping[str, np.ndarray]] = None,
    seed: int = 0,
    intra_op_threads: Optional[int] = None,
    allow_fallback: bool = False,
    cudnn_conv_algo_search: str = "EXHAUSTIVE",
    progress: Optional[Progress] = None,
) -> BenchResult:
    """Time every model on every provider at every optimization level, with the same inputs for all.

    models: paths, ModelProtos, or (label, path-or-model) pairs; the first is the reference of the ratio column.
    input_shapes: {name: shape} or specs such as ["input:8x3x224x224"]; inputs: arrays by input name (else seeded
    random data). A provider that is missing or that ORT silently replaced makes its rows fail with the reason
    (see BenchResult.failures) unless allow_fallback, which runs them on what ORT has and sets `warning`.
    progress(done, total, description) is called before each row and once at the end.
    fold: `models` is one model, timed against its fold in memory, folded as `bnfold.fold(model, **fold_options)`
    (e.g. {"keep_input_initializers": True}, or a bnfold.FoldOptions) folds it; result.fold_report says what was
    folded.
    """
    if warmup < 0 or iterations < 1:
        raise UsageError(f"need warmup >= 0 and iterations >= 1 (got warmup={warmup}, iterations={iterations})")
    unknown_levels = [level for level in opt_levels if level not in OPT_LEVELS]
    if unknown_levels or not opt_levels:
        raise UsageError(f"unknown ORT optimization level(s) {unknown_levels}; choose from {', '.join(OPT_LEVELS)}")
    cudnn_conv_algo_search = cudnn_conv_algo_search.upper()
    if cudnn_conv_algo_search not in CUDNN_CONV_ALGO_SEARCH_CHOICES:
        raise UsageError(
            f"unknown cuDNN conv algorithm search {cudnn_conv_algo_search!r}; "
            f"choose from {', '.join(CUDNN_CONV_ALGO_SEARCH_CHOICES)}"
        )
    if isinstance(providers, str):
        providers = [part.strip() for part in providers.split(",") if part.strip()]
    if not providers:
        raise UsageError("bench needs at least one execution provider, such as cpu")
    if fold:
        fold_options = FoldOptions.of(fold_options, "fold_options")  # checked before any model is read
    elif fold_options:
        raise UsageError("fold_options apply to the fold bench makes itself: pass fold=True (--fold) with them")
    ort = import_onnxruntime()
    labelled = _labelled_models(models)
    fold_report = None
    if fold:
        labelled, fold_report = _with_fold(labelled, fold_options)
    _check_same_inputs(labelled)
    shapes = input_shapes if isinstance(input_shapes, Mapping) else parse_shape_specs(input_shapes or ())
    feeds, shape_notes = plan_feeds(labelled[0][1], shapes, inputs, seed, labelled[0][0])
    first_feed = next(iter(feeds.values()), None)
    batch_size = int(first_feed.shape[0]) if first_feed is not None and first_feed.ndim else 1
    threads = intra_op_threads or default_intra_op_threads()
    serialized = [(label, model.SerializeToString()) for label, model in labelled]

    rows: List[BenchRow] = []
    total = len(providers) * len(opt_levels) * len(serialized)
    for provider in providers:
        for opt_level in opt_levels:
            for label, model_bytes in serialized:
                if progress:
                    progress(len(rows), total, f"{label} {provider} {opt_level}")
                rows.append(_bench_row(
                    label, model_bytes, provider, opt_level, feeds,
                    warmup=warmup, iterations=iterations, threads=threads, batch_size=batch_size,
                    allow_fallback=allow_fallback, cudnn_conv_algo_search=cudnn_conv_algo_search,
                ))
    if progress:
        progress(total, total, "done")
    _fill_ratios(rows, reference=serialized[0][0], compare=len(serialized) > 1)
    return BenchResult(
        rows=rows,
        models=[label for label, _ in serialized],
        providers=list(providers),
        opt_levels=list(opt_levels),
        warmup=warmup,
        iterations=iterations,
        intra_op_threads=threads,
        batch_size=batch_size,
        input_shapes={name: tuple(array.shape) for name, array in feeds.items()},
        seed=seed,
        cudnn_conv_algo_search=cudnn_conv_algo_search,
        onnxruntime_version=ort.__version__,
        shape_notes=shape_notes,
        fold_report=fold_report,
    )


def _with_fold(labelled: List[Tuple[str, onnx.ModelProto]], fold_options: FoldOptions) -> Tuple[list, object]:
    """The one model and its in-memory fold, labelled "folded", with the fold's report."""
    from .folding import fold_model

    if len(labelled) != 1:
        raise UsageError(f"fold=True (--fold) takes exactly one model (got {len(labelled)}); it compares it with "
                         "its folded form")
    folded, report = fold_model(labelled[0][1], fold_options)
    return [*labelled, ("folded", folded)], report


def _bench_row(label, model_bytes, provider, opt_level, feeds, *, warmup, iterations, threads, batch_size,
               allow_fallback, cudnn_conv_algo_search) -> BenchRow:
    row = BenchRow(model=label, provider=provider, opt_level=opt_level)
    start = time.perf_counter()
    try:
        session = make_session(
            model_bytes,
            opt_level=opt_level,
            providers=[_provider_spec(provider, cudnn_conv_algo_search)],
            intra_op_threads=threads,
            allow_fallback=allow_fallback,
        )
    except ProviderError as error:
        row.error = str(error)
        return row
    row.session_create_s = time.perf_counter() - start
    row.active_providers = list(session.get_providers())
    row.warning = _fallback_warning(provider, row.active_providers)
    primary = row.active_providers[0] if row.active_providers else None
    device = "cuda" if primary in CUDA_MEMORY_PROVIDERS else None
    first_s, timings_s = time_runs(make_runner(session, feeds, device), warmup, iterations)
    row.first_run_ms = first_s * 1e3
    row.stats = summarize(timings_s, batch_size)
    return row


def _fill_ratios(rows: List[BenchRow], *, reference: str, compare: bool) -> None:
    """Set each row's ratio to its p50 over the reference model's p50 at the same provider and opt level."""
    if not compare:
        return
    baseline = {
        (row.provider, row.opt_level): getattr(row.stats, RATIO_STATISTIC)
        for row in rows
        if row.model == reference and not row.failed
    }
    for row in rows:
        base = baseline.get((row.provider, row.opt_level))
        if not row.failed and base:
            row.ratio = getattr(row.stats, RATIO_STATISTIC) / base
