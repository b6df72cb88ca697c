"""`bnfold MODEL... -o OUT`: fold, verify, write atomically, print what changed; many models in worker processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .common import (ToleranceCommand, atol_option, exit_codes_epilog, input_shape_option, inputs_option,
                     json_target_option, parse_tolerances, quiet_option, rtol_option, runs_option, seed_option,
                     write_json)
from .fold_options import (fold_input_initializers_option, inline_functions_option, keep_input_initializers_option,
                           skip_option, standalone_option)


@click.command(cls=ToleranceCommand, epilog=exit_codes_epilog(
    "Rules: see `bnfold rules`. A skipped end-to-end check (no input size lets the original model run) is said in "
    "one line and exits 0; --require-end-to-end makes it exit 2."))
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="Where to write the folded model: a file, or a directory to write into (an existing one, or one "
                   "written with a trailing /, created if missing). Several models, or a directory given as MODEL, "
                   "need a directory (created if missing); paths below a MODEL directory are kept.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes when folding several models. Default: the cores this process may use.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="With several models: stop a model's worker after this long; that model fails (exit 3), the "
                   "others go on.")
@click.option("--overwrite", is_flag=True, help="Allow -o to name the input file itself.")
@click.option("--dry-run", is_flag=True, help="Fold and report, but write nothing.")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime equivalence check (onnxruntime is not imported).")
@click.option("--require-end-to-end", is_flag=True,
              help="Fail (exit 2, nothing written) when the end-to-end check cannot run because no size of a "
                   "dynamic input dim lets the original model run; by default the fold is written and the skip said.")
@click.option("--force", is_flag=True, help="Write the folded model even if verification fails (exit code stays 1).")
@click.option("--no-check", is_flag=True, help="Do not run onnx.checker on the input.")
@fold_input_initializers_option
@keep_input_initializers_option
@inline_functions_option
@standalone_option
@skip_option
@click.option("--external-data/--no-external-data", default=None,
              help="Write weights to OUTPUT.data beside the model. Default: only above protobuf's 2 GiB limit.")
@input_shape_option
@inputs_option
@seed_option
@runs_option
@atol_option
@rtol_option
@json_target_option
@click.option("-v", "--verbose", is_flag=True,
              help="Also list every folded BN, and each kept BN of a reason several share (said once by default).")
@quiet_option
def fold(models, output, jobs, timeout, overwrite, dry_run, no_verify, require_end_to_end, force, no_check,
         fold_input_initializers, keep_input_initializers, inline_functions, standalone, skip_rules, external_data,
         input_shapes, input_files, seed, runs, atol, rtol, json_target, verbose, quiet):
    """Fold eval-mode BatchNormalization in MODEL into neighbouring weights and write it to OUTPUT.

    The folded model is checked against the original in ONNX Runtime (graph optimizations disabled) before it is
    written: every output and every intermediate tensor both models share, each against a tolerance that follows
    its own data (see `bnfold verify --help`); if they differ, nothing is written, the exit code is 1 and the first
    diverging tensor and its BN are named. Dynamic input dims are chosen (batch 1, other sizes tried until the
    original runs) and the shapes used are printed. The input is never overwritten unless -o
    names it and --overwrite is given. Writes are atomic (temporary file, fsync, rename).

    \b
    Several MODELs, or a directory (searched recursively for *.onnx), are folded by -j worker processes into the
    directory -o names (created if missing): one line per model (a progress bar on a terminal), then a summary
    table. A model that fails does not stop the others.
    """
    from ..errors import UsageError
    from ..options import FoldFileOptions, VerifyOptions

    # Made once, before any model is read (contradicting flags are one usage error), and passed through.
    fold_options = FoldFileOptions.from_keywords({
        "verify": not no_verify, "force": force, "dry_run": dry_run, "overwrite": overwrite, "check": not no_check,
        "external_data": external_data, "fold_input_initializers": fold_input_initializers,
        "keep_input_initializers": keep_input_initializers, "skip": skip_rules,
        "inline_functions": inline_functions, "require_end_to_end": require_end_to_end, "standalone": standalone,
        "verify_options": VerifyOptions(input_shapes=list(input_shapes) or None, input_files=input_files, seed=seed,
                                        runs=runs, atol=parse_tolerances(atol, "--atol"),
                                        rtol=parse_tolerances(rtol, "--rtol")),
    })
    if len(models) == 1 and not os.path.isdir(models[0]):
        if timeout is not None:
            raise UsageError("--timeout bounds each model's worker when folding several models or a directory; "
                             "one model is folded in this process (bound it with `timeout SECONDS bnfold ...`)")
        _fold_one(models[0], _single_destination(models[0], output), dry_run, fold_options, json_target, verbose,
                  quiet)
    else:
        _fold_many(models, output, jobs, timeout, dry_run, fold_options, json_target, quiet)


def _names_directory(output: str) -> bool:
    return output.endswith(("/", os.sep)) or os.path.isdir(output)


def _single_destination(model: str, output):
    """-o FILE as given; -o DIR (existing, or written with a trailing /) means DIR/<model's file name>."""
    if output is None or not _names_directory(output):
        return output
    return os.path.join(_output_directory(output), Path(model).name)


def _output_directory(output: str) -> str:
    """-o DIR for a directory of models, several models or `-o DIR/`: created (with its parents) if missing."""
    from ..errors import OutputError

    if os.path.isdir(output):
        return output
    if os.path.lexists(output.rstrip("/" + os.sep) or output):
        raise OutputError(f"{output}: exists and is not a directory; -o must name a directory here")
    try:
        os.makedirs(output)
    except OSError as error:
        raise OutputError(f"{output}: cannot create the output directory ({error.strerror or error})") from None
    return output


def _fold_one(model, output, dry_run, fold_options, json_target, verbose, quiet) -> None:
    from ..errors import VerificationFailed
    from ..folding import fold_file

    data_before = _data_identity(output) if output is not None else None
    also_writes = [] if json_target in (None, "-") else [(json_target, "the JSON report")]
    try:
        report = fold_file(model, output, also_writes=also_writes, options=fold_options)
    except VerificationFailed as failure:
        report = getattr(failure, "report", None)
        if report is not None:
            _print(report, json_target, verbose, quiet)
        raise
    _print(report, json_target, verbose, quiet)
    if report.written and not quiet and json_target != "-":
        click.echo(_wrote_line(report, data_before))
    if report.internal_error_warning():
        click.echo(f"bnfold: warning: {report.internal_error_warning()}", err=True)
    if quiet and report.verification_skipped:
        click.echo(f"bnfold: warning: {report.verification_skipped}", err=True)
    if report.verification is not None and not report.verification.passed:
        click.echo("bnfold: error: verification FAILED; output written because of --force", err=True)
        click.get_current_context().exit(1)


def _print(report, json_target, verbose: bool, quiet: bool) -> None:
    if json_target is not None:
        write_json(report.to_dict(), json_target)
    if json_target == "-":
        return
    if quiet:  # only what failed: the comparison that did not pass
        if report.verification is not None and not report.verification.passed:
            click.echo(report.verification.summary())
        return
    click.echo(report.render(verbose=verbose))
    if report.verification is not None:
        click.echo(report.verification.summary())


def _data_identity(output: str):
    """The identity of the external data file a write to `output` would replace (bnfold.file_identity)."""
    from ..file_identity import identity
    from ..saving import data_file_path

    return identity(data_file_path(output))


def _wrote_line(report, data_before) -> str:
    """'wrote OUT (82.4 KiB) in 0.52 s', with the external data file when this run wrote one (a write renames a new
    file into place, so a data file this run did not write keeps its identity)."""
    from ..report import size_text
    from ..saving import data_file_path

    sizes = [size_text(Path(report.destination).stat().st_size)]
    data = data_file_path(report.destination)
    if data.is_file() and _data_identity(report.destination) != data_before:
        sizes.append(f"weights in {data.name}: {size_text(data.stat().st_size)}")
    return f"wrote {report.destination} ({', '.join(sizes)}) in {report.elapsed_s:.2f} s"


def _fold_many(models, output, jobs, timeout, dry_run, fold_options, json_target, quiet) -> None:
    from ..batch import fold_files
    from ..errors import UsageError

    if output is None and not dry_run:
        if len(models) == 2 and os.path.isfile(models[0]) and not os.path.lexists(models[1]):
            raise UsageError(f"{models[1]} does not exist, so it is not a model to fold: to write the folded "
                             f"model there, pass -o: bnfold {models[0]} -o {models[1]}")
        raise UsageError("no output directory: pass -o DIR (or --dry-run to only report)")
    if output is not None:
        given = f"{models[0]} is a directory" if len(models) == 1 else f"{len(models)} models given"
        if output.endswith(".onnx") and not os.path.isdir(output):
            raise UsageError(f"{given}: -o must name a directory, not a model file ({output})")
        if not dry_run:
            _output_directory(output)
        elif not os.path.isdir(output):
            raise UsageError(f"{given}: with --dry-run, -o must name an existing directory ({output} is not one)")
    show_lines = not quiet and json_target != "-"
    bar = None
    if show_lines and sys.stderr.isatty():
        bar = click.progressbar(length=len(models), label="folding", file=sys.stderr, show_pos=True)

    def progress(result, done: int, total: int) -> None:
        if bar is not None:
            bar.length = total
            bar.update(1)
        elif show_lines:
            click.echo(f"[{done}/{total}] {_line(result)}")

    try:
        also_writes = [] if json_target in (None, "-") else [(json_target, "the JSON report")]
        result = fold_files(models, output, jobs=jobs, progress=progress, timeout=timeout, also_writes=also_writes,
                            options=fold_options)
    finally:
        if bar is not None:
            bar.render_finish()
    if json_target is not None:
        write_json(result.to_dict(), json_target)
    if show_lines:
        click.echo(result.table())
    for model in result.failed:
        click.echo(f"bnfold: error: {model.message}", err=True)
    click.get_current_context().exit(result.exit_code)


def _line(result) -> str:
    target = f" -> {result.destination}" if result.destination and result.exit_code in (0, 1) else ""
    if result.report is None:
        return f"error (exit {result.exit_code}): {result.message}"
    report = result.report
    return (f"{result.source}{target}: {report.folded_count} folded, {report.kept_count} kept, {result.verdict} "
            f"({result.elapsed_s:.2f} s)")


@click.command("rules")
def rules():
    """List the folding rules, in the order they are tried (names for --skip)."""
    from ..rules import descriptions

    rows = descriptions()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        click.echo(f"{name:{width}}  {description}")
