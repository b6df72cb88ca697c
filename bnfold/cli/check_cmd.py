"""`bnfold check MODEL...`: a lint gate: exit 1 when a model still has a BatchNormalization bnfold could fold."""

from __future__ import annotations

import shlex

import click

from .common import exit_codes_epilog, json_option, quiet_option, refuse_report_overlaps, write_json
from .fold_options import (fold_input_initializers_option, inline_functions_option, keep_input_initializers_option,
                           skip_option)


@click.command("check", epilog=exit_codes_epilog(
    "Here exit 1 means a model is over a limit; 2 a model that cannot be read."))
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("--max-foldable", type=click.IntRange(min=0), default=0, show_default=True,
              help="BNs per model that may still be foldable into a neighbour's weights.")
@click.option("--max-standalone", type=click.IntRange(min=0), default=None,
              help="BNs per model that could only become Mul+Add (nothing to fold into). Default: no limit.")
@click.option("--max-kept", type=click.IntRange(min=0), default=None,
              help="BNs per model that must stay (listed with reasons). Default: no limit.")
@click.option("--no-check", is_flag=True, help="Do not run onnx.checker on the input.")
@fold_input_initializers_option
@keep_input_initializers_option
@inline_functions_option
@skip_option
@json_option("prints only what -q prints: the models over a limit or in error, and the summary")
@click.option("-v", "--verbose", is_flag=True, help="List each kept BN of a reason several share (said once by "
                                                         "default).")
@quiet_option
def check(models, max_foldable, max_standalone, max_kept, no_check, fold_input_initializers,
          keep_input_initializers, inline_functions, skip_rules, json_target, verbose, quiet):
    """Report every BatchNormalization in MODELs that bnfold would fold, and every one that must stay.

    Each model is folded in memory (nothing is written, ONNX Runtime is not needed). A directory is searched
    recursively for *.onnx. Other normalization layers (Layer/Group/InstanceNormalization) are listed with why
    they cannot be folded. Exit 1 when any model is over a limit, with the command that folds it. The last line
    sums up the run; -q (and --json FILE) print only the models over a limit or in error, and that line.
    """
    from ..batch import collect_models, worst_exit_code
    from ..errors import BnfoldError
    from ..lint import ModelCheck, check as check_model
    from ..options import FoldOptions

    fold_options = FoldOptions(fold_input_initializers=fold_input_initializers,
                               keep_input_initializers=keep_input_initializers, skip=skip_rules,
                               inline_functions=inline_functions, local_check=False)
    fold_flags = [*(["--fold-input-initializers"] if fold_input_initializers else []),
                  *(["--keep-input-initializers"] if keep_input_initializers else []),
                  *(["--inline-functions"] if inline_functions else []),
                  *(word for rule in skip_rules for word in ("--skip", rule))]
    brief = quiet or (json_target is not None and json_target != "-")
    collected = [path for path, _ in collect_models(models)]
    refuse_report_overlaps(collected, [(json_target, "the JSON report")])
    checks = []
    for path in collected:
        try:
            result = check_model(path, check_model=not no_check, options=fold_options, max_foldable=max_foldable,
                                 max_standalone=max_standalone, max_kept=max_kept)
        except BnfoldError as error:
            result = ModelCheck(source=str(path), error=str(error), error_code=error.exit_code)
        checks.append(result)
        if json_target != "-" and not (brief and result.exit_code == 0):
            click.echo(("bnfold: error: " if result.error is not None else "") + result.render(verbose=verbose),
                       err=result.error is not None)
    exit_code = worst_exit_code(result.exit_code for result in checks)
    if json_target is not None:
        write_json({"exit_code": exit_code, "models": [result.to_dict() for result in checks]}, json_target)
    if json_target != "-":
        fix = fix_command(checks, fold_flags, max_foldable, max_standalone)
        if fix:
            click.echo(f"to fold them: {fix}")
        click.echo(summary_line(checks, exit_code))
    click.get_current_context().exit(exit_code)


def summary_line(checks, exit_code: int) -> str:
    """'check: 3 models (1 over a limit, 0 in error); BN: 5 foldable into weights, 0 only as Mul+Add, 2 kept: FAIL
    (exit 1)'."""
    read = [result for result in checks if result.error is None]
    over = sum(1 for result in read if result.violations)
    count = lambda what: sum(len(getattr(result, what)) for result in read)  # noqa: E731
    verdict = "ok" if exit_code == 0 else "FAIL"
    return (f"check: {len(checks)} model{'s' if len(checks) != 1 else ''} ({over} over a limit, "
            f"{len(checks) - len(read)} in error); BN: {count('foldable')} foldable into weights, "
            f"{count('standalone')} only as Mul+Add, {count('kept')} kept: {verdict} (exit {exit_code})")


def fix_command(checks, fold_flags, max_foldable, max_standalone) -> str:
    """The command that folds, in place, what put models over --max-foldable / --max-standalone ("" if none: a kept
    BN has its reason, not a command)."""
    flags, fixable = list(fold_flags), []
    for result in checks:
        if result.error is not None:
            continue
        if max_standalone is not None and len(result.standalone) > max_standalone:
            fixable.append(result.source)
            if "--standalone" not in flags:
                flags.append("--standalone")
        elif max_foldable is not None and len(result.foldable) > max_foldable:
            fixable.append(result.source)
    options = "".join(f" {shlex.quote(flag)}" for flag in flags)
    if len(fixable) == 1:
        model = shlex.quote(fixable[0])
        return f"bnfold {model} -o {model} --overwrite{options}"
    if fixable:
        models = " ".join(shlex.quote(source) for source in fixable)
        return f'for m in {models}; do bnfold "$m" -o "$m" --overwrite{options}; done'
    return ""
