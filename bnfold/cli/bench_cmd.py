"""`bnfold bench`: latency of the original vs the folded model on ONNX Runtime CPU / CUDA execution providers."""

from __future__ import annotations

import contextlib
import sys

import click

from ..errors import ProviderError, UsageError
from ..runtime import OPT_LEVELS
from .common import (exit_codes_epilog, input_shape_option, inputs_option, json_target_option, quiet_option,
                     refuse_report_overlaps, seed_option, write_json)
from .fold_options import (fold_input_initializers_option, inline_functions_option, keep_input_initializers_option,
                           skip_option, standalone_option)

DEFAULT_OPT_LEVELS = "disable,all"  # mirrors bnfold.benchmark.DEFAULT_OPT_LEVELS; kept here so --help stays import-light


def split_list(text: str) -> list:
    return [part.strip() for part in text.split(",") if part.strip()]


@click.command("bench", epilog=exit_codes_epilog(
    "Here exit 2 also means a requested execution provider is missing or ONNX Runtime fell back from it."))
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL...]")
@click.option("--fold", "fold_in_memory", is_flag=True,
              help="Fold the single MODEL in memory, as `bnfold` folds it with the same fold options below, and "
                   "compare it with the folded result.")
@fold_input_initializers_option
@keep_input_initializers_option
@inline_functions_option
@standalone_option
@skip_option
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
@json_target_option
@click.option("--plot", "plot_path", metavar="PNG", help="Write a bar chart of p50 and p90 (needs bnfold[plot]).")
@quiet_option
def bench(models, fold_in_memory, fold_input_initializers, keep_input_initializers, inline_functions, standalone,
          skip_rules, providers, opt_levels, warmup, iterations, input_shapes, input_files, seed,
          intra_op_threads, allow_fallback, cudnn_conv_algo_search, json_target, plot_path, quiet):
    """Time MODELs on ONNX Runtime: each model x provider x optimization level, same seeded inputs for all.

    \b
      bnfold bench model.onnx folded.onnx --providers cpu,cuda --input-shape input:8x3x224x224
      bnfold bench model.onnx --fold --json out.json --plot latency.png

    The ratio column is each row's p50 over the first model's p50 (same provider and level). Models are labelled
    by the shortest end of their path that tells them apart. Inputs are chosen as `bnfold MODEL -o OUT` chooses
    them for its check (dynamic dims: batch 1, other sizes tried until the first model runs; the choice is
    printed). A provider that is missing, or that ORT silently replaced with CPU, fails its rows and the command
    exits 2 unless --allow-fallback. -q prints no progress bar and no table (use it with --json FILE or --plot),
    only the rows that failed.
    """
    from ..benchmark import bench as run_bench, import_matplotlib_figure
    from ..inputs import graph_inputs, load_input_files, parse_shape_specs
    from ..options import FoldOptions

    fold_flags = {"fold_input_initializers": fold_input_initializers,
                  "keep_input_initializers": keep_input_initializers, "inline_functions": inline_functions,
                  "standalone": standalone, "skip": skip_rules}
    if not fold_in_memory and any(fold_flags.values()):
        raise UsageError("fold options (--fold-input-initializers, --keep-input-initializers, --inline-functions, "
                         "--standalone, --skip) apply to --fold only")
    fold_options = FoldOptions(**fold_flags)  # before any model is read: contradicting flags are one usage error
    refuse_report_overlaps(models, [(json_target, "the JSON results"), (plot_path, "the plot")])
    if plot_path:
        import_matplotlib_figure()  # fail before minutes of timing, not after
    labelled = _load_models(models, fold_in_memory)
    provided = load_input_files(input_files, graph_inputs(labelled[0][1])) if input_files else None
    levels = [level for text in (opt_levels or [DEFAULT_OPT_LEVELS]) for level in split_list(text)]
    show_progress = not quiet and json_target != "-" and sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        result = run_bench(
            labelled,
            fold=fold_in_memory,
            fold_options=fold_options if fold_in_memory else None,
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
    if json_target is not None:
        write_json(result.to_dict(), json_target)
    if not quiet and json_target != "-":
        click.echo(result.table(with_problems=False))
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
    """(label, ModelProto) pairs of the files as given; with --fold the one file (bench folds it)."""
    from ..benchmark import model_labels
    from ..loading import load_model

    if fold_in_memory and len(paths) != 1:
        raise UsageError(f"--fold takes exactly one MODEL (got {len(paths)}); it compares it with its folded form")
    return [(label, load_model(path)) for label, path in zip(model_labels(paths), paths)]


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
