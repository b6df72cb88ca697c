"""`bnfold bench`: latency of the original vs the folded model on ONNX Runtime CPU / CUDA execution providers."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from ..errors import ProviderError, UsageError
from ..runtime import OPT_LEVELS
from .common import input_shape_option, inputs_option, refuse_report_overlaps, seed_option

DEFAULT_OPT_LEVELS = "disable,all"  # mirrors bnfold.benchmark.DEFAULT_OPT_LEVELS; kept here so --help stays import-light


def split_list(text: str) -> list:
    return [part.strip() for part in text.split(",") if part.strip()]


@click.command("bench")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL...]")
@click.option("--fold", "fold_in_memory", is_flag=True,
              help="Fold the single MODEL in memory and compare it with the folded result.")
@click.option("--providers", default="cpu", show_default=True, metavar="LIST",
              help="Comma-separated execution providers: cpu, cuda, or any name ONNX Runtime reports.")
@click.option("--ort-opt-level", "opt_levels", multiple=True, metavar="LEVEL",
              help=f"ORT graph optimization level(s): {'|'.join(OPT_LEVELS)}; repeatable or comma-separated. "
              f"Default {DEFAULT_OPT_LEVELS}: the raw gain, and the gain over ORT's default (which already fuses "
              "Conv+BN itself).")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Untimed runs before timing (on CUDA they absorb cuDNN's algorithm search).")
@click.option("--iterations", type=click.IntRange(min=1), default=100, show_default=True, help="Timed runs.")
@input_shape_option
@inputs_option
@seed_option
@click.option("--intra-op-threads", type=click.IntRange(min=1), default=None,
              help="ORT intra-op threads. Default: the cores this process may use (stated in the output).")
@click.option("--allow-fallback", is_flag=True,
              help="Run rows whose provider is missing or was replaced by ORT on what ORT has (warned), "
              "instead of failing them.")
@click.option("--cudnn-conv-algo-search", type=click.Choice(["EXHAUSTIVE", "HEURISTIC", "DEFAULT"],
              case_sensitive=False), default="EXHAUSTIVE", show_default=True,
              help="CUDA: how cuDNN picks convolution algorithms. EXHAUSTIVE benchmarks them during the first "
              "runs, which are therefore slow.")
@click.option("--json", "json_path", metavar="PATH", help="Write the results as JSON to PATH ('-' for stdout).")
@click.option("--plot", "plot_path", metavar="PNG", help="Write a bar chart of p50 and p90 (needs bnfold[plot]).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def bench(models, fold_in_memory, providers, opt_levels, warmup, iterations, input_shapes, input_files, seed,
          intra_op_threads, allow_fallback, cudnn_conv_algo_search, json_path, plot_path, quiet):
    """Time MODELs on ONNX Runtime: each model x provider x optimization level, same seeded inputs for all.

    \b
      bnfold bench model.onnx folded.onnx --providers cpu,cuda --input-shape input:8x3x224x224
      bnfold bench model.onnx --fold --json out.json --plot latency.png

    The ratio column is each row's p50 over the first model's p50 (same provider and level). A provider that is
    missing, or that ORT silently replaced with CPU, fails its rows and the command exits 2 unless --allow-fallback.
    """
    from ..benchmark import bench as run_bench, import_matplotlib_figure
    from ..inputs import graph_inputs, load_input_files, parse_shape_specs

    refuse_report_overlaps(models, [(json_path, "the JSON results"), (plot_path, "the plot")])
    if plot_path:
        import_matplotlib_figure()  # fail before minutes of timing, not after
    labelled = _load_models(models, fold_in_memory)
    provided = load_input_files(input_files, graph_inputs(labelled[0][1])) if input_files else None
    levels = [level for text in (opt_levels or [DEFAULT_OPT_LEVELS]) for level in split_list(text)]
    show_progress = not quiet and sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        result = run_bench(
            labelled,
            providers=split_list(providers),
            opt_levels=levels,
            warmup=warmup,
            iterations=iterations,
            input_shapes=parse_shape_specs(input_shapes),
            inputs=provided,
            seed=seed,
            intra_op_threads=intra_op_threads,
            allow_fallback=allow_fallback,
            cudnn_conv_algo_search=cudnn_conv_algo_search,
            progress=_progress_bar(stack) if show_progress else None,
        )
    click.echo(result.table(with_problems=False), err=json_path == "-")
    if json_path:
        _write_json(result.to_dict(), json_path)
    if plot_path and len(result.failures) < len(result.rows):
        result.plot(plot_path)
    for line in result.problems():
        click.echo(f"bnfold: {line}", err=True)
    if result.failures:
        raise ProviderError(
            f"{len(result.failures)} of {len(result.rows)} benchmark rows failed because their execution provider "
            "is missing or ONNX Runtime fell back from it; pass --allow-fallback to run them on what ORT has"
        )


def _load_models(paths, fold_in_memory: bool) -> list:
    """(label, ModelProto) pairs: the files as given, or with --fold the one file and its in-memory fold."""
    from ..loading import load_model

    if not fold_in_memory:
        return [(Path(path).name, load_model(path)) for path in paths]
    if len(paths) != 1:
        raise UsageError(f"--fold takes exactly one MODEL (got {len(paths)}); it compares it with its folded form")
    from ..folding import fold

    original = load_model(paths[0])
    folded, _report = fold(original)
    return [(Path(paths[0]).name, original), ("folded", folded)]


def _progress_bar(stack: contextlib.ExitStack):
    """A bench progress callback drawing a click progress bar on stderr, created once the row count is known."""
    bar = None

    def update(done: int, total: int, description: str) -> None:
        nonlocal bar
        if bar is None:
            bar = stack.enter_context(click.progressbar(
                length=total, label="benchmarking", file=click.get_text_stream("stderr"),
                item_show_func=lambda item: item,
            ))
        bar.update(done - bar.pos, description)

    return update


def _write_json(document: dict, path: str) -> None:
    text = json.dumps(document, indent=2)
    if path == "-":
        click.echo(text)
        return
    from ..saving import save_text

    save_text(text + "\n", path)  # atomically, with the output rules every file bnfold writes follows
