"""What `bnfold bench` measured, as data (BenchResult, one BenchRow per model x provider x level), as the text
table the CLI prints, and as a PNG bar chart (matplotlib is imported only to draw it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import MissingDependencyError, OutputError, UsageError
from .runtime import provider_name
from .tables import format_table

# The statistic the folded/original ratio compares: the median resists the odd scheduler hiccup.
RATIO_STATISTIC = "p50_ms"
JSON_SCHEMA = "bnfold.bench/1"


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
    shape_notes: List[str] = field(default_factory=list)  # how dynamic dims got their sizes
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
            "shape_notes": list(self.shape_notes),
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
        lines += [f"inputs: {note}" for note in self.shape_notes]
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

    def fold_line(self) -> str:
        """What the in-memory fold did; when it did nothing, that both rows time the same model."""
        report = self.fold_report
        if not report.changed:
            return (f"folded in memory: nothing was folded ({report.kept_count} BN kept; `bnfold MODEL --dry-run` "
                    f"says why), so {self.models[-1]} is the same model as {self.models[0]}")
        removed = f"; {len(report.removed_inputs)} unread initializer inputs removed" if report.removed_inputs else ""
        return (f"folded in memory: {report.folded_count} of {len(report.decisions)} BN folded, {report.kept_count} "
                f"kept{removed}")

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
