"""Latency of ONNX models on ONNX Runtime execution providers: the original vs the folded model, same inputs.

    result = bnfold.bench(["model.onnx", "folded.onnx"], providers=["cpu", "cuda"])
    print(result.table())

Each model x provider x graph-optimization level is one row: session creation time, the first run on its own
(cuDNN's convolution algorithm search happens there), then `iterations` timed runs after `warmup` untimed ones.
The default levels are "disable" (the raw gain of folding) and "all" (the gain over ORT's own default, which
already fuses Conv+BN when it builds the session). onnxruntime and matplotlib are imported only when needed.

Over 300 lines on purpose: sessions per provider, IOBinding for CUDA, timing and the result table are one
measurement.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from .errors import MissingDependencyError, OutputError, ProviderError, UsageError
from .inputs import graph_inputs, make_inputs, parse_shape_specs
from .loading import load_model
from .runtime import OPT_LEVELS, import_onnxruntime, make_session, provider_name
from .tables import format_table

DEFAULT_OPT_LEVELS = ("disable", "all")
CUDNN_CONV_ALGO_SEARCH_CHOICES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
# Providers whose tensors live in CUDA memory: timed through IOBinding so host<->device copies stay out of the figure.
CUDA_MEMORY_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# The statistic the folded/original ratio compares: the median resists the odd scheduler hiccup.
RATIO_STATISTIC = "p50_ms"
JSON_SCHEMA = "bnfold.bench/1"
# bnfold.fold's keywords that bench(fold=True) passes on, as `bnfold` takes them.
FOLD_KEYWORDS = frozenset({"fold_input_initializers", "keep_input_initializers", "skip", "inline_functions",
                           "standalone", "local_check"})

ModelLike = Union[str, "os.PathLike[str]", onnx.ModelProto]
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one row's timed runs, in milliseconds; throughput is items (batch rows) per second."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput: float


def summarize(timings_s: Sequence[float], batch_size: int) -> LatencyStats:
    """Mean, percentiles (numpy's linear interpolation), extremes and items/s of per-run wall times in seconds."""
    if len(timings_s) == 0:
        raise ValueError("no timings to summarize")
    ms = np.asarray(timings_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return LatencyStats(
        mean_ms=mean,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        throughput=batch_size * 1e3 / mean if mean > 0 else float("inf"),
    )


@dataclass
class BenchRow:
    """One model on one provider at one optimization level; `error` is set (and the figures are None) if it failed."""

    model: str
    provider: str  # as requested: "cpu", "cuda", or an ORT provider name
    opt_level: str
    active_providers: List[str] = field(default_factory=list)
    session_create_s: Optional[float] = None
    first_run_ms: Optional[float] = None
    stats: Optional[LatencyStats] = None
    ratio: Optional[float] = None  # RATIO_STATISTIC of this row / that of the first model, same provider and level
    error: Optional[str] = None
    warning: Optional[str] = None  # set when --allow-fallback let the row run on another provider

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict:
        stats = asdict(self.stats) if self.stats else {name: None for name in LatencyStats.__dataclass_fields__}
        return {
            "model": self.model,
            "provider": self.provider,
            "ort_provider": provider_name(self.provider),
            "active_providers": list(self.active_providers),
            "opt_level": self.opt_level,
            "session_create_s": self.session_create_s,
            "first_run_ms": self.first_run_ms,
            **{name: value for name, value in stats.items() if name != "throughput"},
            "throughput_items_per_s": stats["throughput"],
            "ratio": self.ratio,
            "error": self.error,
            "warning": self.warning,
        }


@dataclass
class BenchResult:
    """Every row of a benchmark run plus the settings that produced it."""

    rows: List[BenchRow]
    models: List[str]
    providers: List[str]
    opt_levels: List[str]
    warmup: int
    iterations: int
    intra_op_threads: int
    batch_size: int
    input_shapes: Dict[str, Tuple[int, ...]]
    seed: int
    cudnn_conv_algo_search: str
    onnxruntime_version: str
    fold_report: Optional[object] = None  # a bnfold.FoldReport when bench folded the model itself (fold=True)

    @property
    def failures(self) -> List[BenchRow]:
        return [row for row in self.rows if row.failed]

    @property
    def warnings(self) -> List[BenchRow]:
        return [row for row in self.rows if row.warning]

    def to_dict(self) -> dict:
        return {
            "schema": JSON_SCHEMA,
            "onnxruntime_version": self.onnxruntime_version,
            "models": list(self.models),
            "providers": list(self.providers),
            "opt_levels": list(self.opt_levels),
            "warmup": self.warmup,
            "iterations": self.iterations,
            "intra_op_threads": self.intra_op_threads,
            "batch_size": self.batch_size,
            "input_shapes": {name: list(shape) for name, shape in self.input_shapes.items()},
            "seed": self.seed,
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "ratio_of": RATIO_STATISTIC if len(self.models) > 1 else None,
            "rows": [row.to_dict() for row in self.rows],
            "fold": None if self.fold_report is None else {
                key: value for key, value in self.fold_report.to_dict().items()
                if key in ("bn_total", "bn_folded", "bn_kept", "merges_done", "removed_inputs")},
        }

    def table(self, with_problems: bool = True) -> str:
        """A fixed-width text table: settings above; the ratio's meaning and (with_problems) failures below."""
        shapes = ", ".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in self.input_shapes.items())
        lines = [
            f"ONNX Runtime {self.onnxruntime_version} | intra-op threads: {self.intra_op_threads} | "
            f"batch {self.batch_size} | warmup {self.warmup}, timed runs {self.iterations} | inputs {shapes}"
        ]
        header = ["model", "provider", "opt", "create s", "first ms", "mean ms", "p50 ms", "p90 ms", "p99 ms",
                  "min ms", "max ms", "items/s", "ratio"]
        body = []
        for row in self.rows:
            provider = f"{row.provider}!" if row.warning else row.provider
            cells = [row.model, provider, row.opt_level]
            if row.failed:
                cells += ["FAILED"] + [""] * (len(header) - 4)
            else:
                stats = row.stats
                cells += [f"{row.session_create_s:.3f}", f"{row.first_run_ms:.3f}"]
                cells += [f"{value:.3f}" for value in (stats.mean_ms, stats.p50_ms, stats.p90_ms, stats.p99_ms,
                                                        stats.min_ms, stats.max_ms)]
                cells += [f"{stats.throughput:.1f}", "-" if row.ratio is None else f"{row.ratio:.3f}"]
            body.append(cells)
        lines += format_table(header, body, left=3)  # model, provider, opt left; figures right
        if len(self.models) > 1:
            lines.append(f"ratio: p50 of the row / p50 of {self.models[0]} on the same provider and opt level "
                         "(below 1: faster)")
        if self.fold_report is not None:
            lines.append(self.fold_line())
        if with_problems:
            lines += self.problems()
        return "\n".join(lines)

    def problems(self) -> List[str]:
        """One line per provider and reason, not per row: failed rows ("FAILED ...") and fallbacks ("FALLBACK ...")."""
        grouped: Dict[Tuple[str, str, str], List[BenchRow]] = {}
        for row in self.rows:
            if row.failed or row.warning:
                kind = "FAILED" if row.failed else "FALLBACK"
                grouped.setdefault((kind, row.provider, row.error or row.warning), []).append(row)
        lines = []
        for (kind, provider, reason), rows in grouped.items():
            models = ", ".join(dict.fromkeys(row.model for row in rows))
            levels = ", ".join(dict.fromkeys(row.opt_level for row in rows))
            count = f"{len(rows)} row" + ("s" if len(rows) != 1 else "")
            lines.append(f"{kind} {provider} ({count}: {models}; opt {levels}): {reason}")
        return lines

    def plot(self, path) -> None:
        plot(self, path)

    def fold_line(self) -> str:
        """What the in-memory fold did; when it did nothing, that both rows time the same model."""
        report = self.fold_report
        if not report.changed:
            return (f"folded in memory: nothing was folded ({report.kept_count} BN kept; `bnfold MODEL --dry-run` "
                    f"says why), so {self.models[-1]} is the same model as {self.models[0]}")
        removed = f"; {len(report.removed_inputs)} unread initializer inputs removed" if report.removed_inputs else ""
        return (f"folded in memory: {report.folded_count} of {len(report.decisions)} BN folded, {report.kept_count} "
                f"kept{removed}")


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


def _labelled_models(models) -> List[Tuple[str, onnx.ModelProto]]:
    """(label, ModelProto) for each of paths, ModelProtos, or (label, path-or-model) pairs; labels made unique."""
    if isinstance(models, (str, os.PathLike, onnx.ModelProto)):
        models = [models]
    labelled = []
    for index, item in enumerate(models):
        if isinstance(item, tuple):
            label, model = item
        elif isinstance(item, onnx.ModelProto):
            label, model = f"model{index + 1}", item
        else:
            label, model = Path(item).name, item
        if not isinstance(model, onnx.ModelProto):
            model = load_model(model)
        if label in {existing for existing, _ in labelled}:
            label = f"{label}#{index + 1}"
        labelled.append((str(label), model))
    if not labelled:
        raise UsageError("bench needs at least one model")
    return labelled


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
    fold_options: Optional[Mapping[str, object]] = None,
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
    (e.g. {"keep_input_initializers": True}) folds it; result.fold_report says what was folded.
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
    ort = import_onnxruntime()
    labelled = _labelled_models(models)
    fold_report = None
    if fold:
        labelled, fold_report = _with_fold(labelled, fold_options)
    elif fold_options:
        raise UsageError("fold_options apply to the fold bench makes itself: pass fold=True (--fold) with them")
    _check_same_inputs(labelled)
    shapes = input_shapes if isinstance(input_shapes, Mapping) else parse_shape_specs(input_shapes or ())
    feeds = make_inputs(labelled[0][1], shapes=shapes, provided=inputs, seed=seed)
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
        fold_report=fold_report,
    )


def _with_fold(labelled: List[Tuple[str, onnx.ModelProto]], fold_options) -> Tuple[list, object]:
    """The one model and its in-memory fold, labelled "folded", with the fold's report."""
    from .folding import fold
    from .options import as_mapping

    if len(labelled) != 1:
        raise UsageError(f"fold=True (--fold) takes exactly one model (got {len(labelled)}); it compares it with "
                         "its folded form")
    options = as_mapping(fold_options, "fold_options")
    unknown = sorted(set(options) - FOLD_KEYWORDS)
    if unknown:
        raise UsageError(f"fold_options: unknown option(s) {unknown}; options are: {', '.join(sorted(FOLD_KEYWORDS))}")
    folded, report = fold(labelled[0][1], **options)
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


def import_matplotlib_figure():
    """matplotlib's Figure class (no pyplot, so no GUI backend or global state), or a MissingDependencyError."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib: pip install 'bnfold[plot]'") from None
    return Figure


def plot(result: BenchResult, path) -> None:
    """Write a PNG bar chart: per provider and opt level, one bar per model, p50 solid with p90 lighter above it."""
    Figure = import_matplotlib_figure()
    groups = list(dict.fromkeys((row.provider, row.opt_level) for row in result.rows if not row.failed))
    if not groups:
        raise UsageError("nothing to plot: every benchmark row failed")
    by_key = {(row.model, row.provider, row.opt_level): row for row in result.rows if not row.failed}
    width = 0.8 / len(result.models)
    figure = Figure(figsize=(max(6.0, 1.6 * len(groups) * len(result.models)), 4.5))
    axes = figure.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(result.models))]
    for index, (model, color) in enumerate(zip(result.models, colors)):
        positions, p50, p90 = [], [], []
        for group_index, (provider, opt_level) in enumerate(groups):
            row = by_key.get((model, provider, opt_level))
            if row is None:
                continue
            positions.append(group_index - 0.4 + width * (index + 0.5))
            p50.append(row.stats.p50_ms)
            p90.append(row.stats.p90_ms)
        axes.bar(positions, p90, width * 0.9, color=color, alpha=0.35)
        axes.bar(positions, p50, width * 0.9, color=color, label=f"{model} p50 (light: p90)")
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([f"{provider}\nopt {opt_level}" for provider, opt_level in groups])
    axes.set_ylabel("latency per run (ms)")
    axes.set_title(f"ONNX Runtime {result.onnxruntime_version}, batch {result.batch_size}, "
                   f"{result.intra_op_threads} intra-op threads")
    axes.legend(fontsize="small")
    figure.tight_layout()
    try:
        figure.savefig(Path(path), format="png", dpi=120)
    except OSError as error:
        raise OutputError(f"{path}: cannot write the plot ({error.strerror or error})") from None
