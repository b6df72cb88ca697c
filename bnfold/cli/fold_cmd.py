"""`bnfold MODEL -o OUT`: fold, verify, write atomically, print what changed."""

from __future__ import annotations

import click

from .common import (ToleranceCommand, atol_option, input_shape_option, inputs_option, parse_tolerances,
                     rtol_option, seed_option)


@click.command(cls=ToleranceCommand, epilog="Rules: see `bnfold rules`. Exit codes: 0 ok (kept BNs are listed; also when "
               "the end-to-end check had to be skipped, which is said), 1 verification failed, 2 bad usage, input or "
               "output (or no input shape for the end-to-end check with --require-end-to-end), 3 internal error.")
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), help="Where to write the folded model.")
@click.option("--overwrite", is_flag=True, help="Allow -o to name the input file itself.")
@click.option("--dry-run", is_flag=True, help="Fold and report, but write nothing.")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime equivalence check (onnxruntime is not imported).")
@click.option("--require-end-to-end", is_flag=True,
              help="Fail (exit 2, nothing written) when the end-to-end check cannot run because no size of a "
                   "dynamic input dim lets the original model run; by default the fold is written and the skip said.")
@click.option("--force", is_flag=True, help="Write the folded model even if verification fails (exit code stays 1).")
@click.option("--no-check", is_flag=True, help="Do not run onnx.checker on the input.")
@click.option("--fold-input-initializers", is_flag=True,
              help="Treat initializers that are also graph inputs (IR >= 4: overridable defaults) as constants.")
@click.option("--inline-functions", is_flag=True,
              help="Inline model-local functions first, so BNs fed by function inputs fold per call site.")
@click.option("--skip", "skip_rules", multiple=True, metavar="RULE", help="Do not apply this rule (repeatable).")
@click.option("--external-data/--no-external-data", default=None,
              help="Write weights to OUTPUT.data beside the model. Default: only above protobuf's 2 GiB limit.")
@input_shape_option
@inputs_option
@seed_option
@atol_option
@rtol_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("-v", "--verbose", is_flag=True, help="Also list every folded BN.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def fold(model, output, overwrite, dry_run, no_verify, require_end_to_end, force, no_check, fold_input_initializers, inline_functions,
         skip_rules,
         external_data, input_shapes, input_files, seed, atol, rtol, as_json, verbose, quiet):
    """Fold eval-mode BatchNormalization in MODEL into neighbouring weights and write it to OUTPUT.

    The folded model is checked against the original in ONNX Runtime (graph optimizations disabled) before it is
    written: every output and every intermediate tensor both models share, each against a tolerance that follows
    its own data (see `bnfold verify --help`); if they differ, nothing is written, the exit code is 1 and the first
    diverging tensor and its BN are named. Dynamic input dims are chosen (batch 1, other sizes tried until the
    original runs) and the shapes used are printed. The input is never overwritten unless -o
    names it and --overwrite is given. Writes are atomic (temporary file, fsync, rename).
    """
    from ..errors import VerificationFailed
    from ..folding import fold_file

    verify_options = {"input_shapes": list(input_shapes) or None, "input_files": input_files, "seed": seed,
                      "atol": parse_tolerances(atol, "--atol"), "rtol": parse_tolerances(rtol, "--rtol")}
    try:
        report = fold_file(model, output, verify=not no_verify, force=force, dry_run=dry_run, overwrite=overwrite,
                           check=not no_check, external_data=external_data, verify_options=verify_options,
                           fold_input_initializers=fold_input_initializers, skip=skip_rules,
                           inline_functions=inline_functions, require_end_to_end=require_end_to_end)
    except VerificationFailed as failure:
        report = getattr(failure, "report", None)
        if report is not None and not quiet:
            _print(report, as_json, verbose)
        raise
    if not quiet:
        _print(report, as_json, verbose)
    elif report.verification_skipped:
        click.echo(f"bnfold: warning: {report.verification_skipped}", err=True)
    if report.verification is not None and not report.verification.passed:
        click.echo("bnfold: error: verification FAILED; output written because of --force", err=True)
        click.get_current_context().exit(1)


def _print(report, as_json: bool, verbose: bool) -> None:
    if as_json:
        click.echo(report.to_json())
        return
    click.echo(report.render(verbose=verbose))
    if report.verification is not None:
        click.echo(report.verification.summary())


@click.command("rules")
def rules():
    """List the folding rules, in the order they are tried (names for --skip)."""
    from ..rules import REGISTRY

    width = max(len(rule.NAME) for rule in REGISTRY)
    for rule in REGISTRY:
        click.echo(f"{rule.NAME:{width}}  {rule.DESCRIPTION}")
