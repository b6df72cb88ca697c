"""`bnfold check MODEL...`: a lint gate: exit 1 when a model still has a BatchNormalization bnfold could fold."""

from __future__ import annotations

import click

from .common import json_target_option, refuse_report_overlaps, write_json


@click.command("check", epilog="Exit codes: 0 every model within the limits, 1 a limit exceeded, 2 a model that "
                               "cannot be read, 3 internal error.")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("--max-foldable", type=click.IntRange(min=0), default=0, show_default=True,
              help="BNs per model that may still be foldable into a neighbour's weights.")
@click.option("--max-standalone", type=click.IntRange(min=0), default=None,
              help="BNs per model that could only become Mul+Add (nothing to fold into). Default: no limit.")
@click.option("--max-kept", type=click.IntRange(min=0), default=None,
              help="BNs per model that must stay (listed with reasons). Default: no limit.")
@click.option("--no-check", is_flag=True, help="Do not run onnx.checker on the input.")
@click.option("--fold-input-initializers", is_flag=True,
              help="Treat initializers that are also graph inputs (IR >= 4) as constants, as `bnfold --fold-input-"
                   "initializers` would.")
@click.option("--inline-functions", is_flag=True, help="Check as `bnfold --inline-functions` would fold.")
@click.option("--skip", "skip_rules", multiple=True, metavar="RULE", help="Do not apply this rule (repeatable).")
@json_target_option
@click.option("-q", "--quiet", is_flag=True, help="Print only the models over a limit or in error.")
def check(models, max_foldable, max_standalone, max_kept, no_check, fold_input_initializers, inline_functions,
          skip_rules, json_target, quiet):
    """Report every BatchNormalization in MODELs that bnfold would fold, and every one that must stay.

    Each model is folded in memory (nothing is written, ONNX Runtime is not needed). A directory is searched
    recursively for *.onnx. Other normalization layers (Layer/Group/InstanceNormalization) are listed with why
    they cannot be folded. Exit 1 when any model is over a limit.
    """
    from ..batch import collect_models, worst_exit_code
    from ..errors import BnfoldError
    from ..lint import ModelCheck, check as check_model

    collected = [path for path, _ in collect_models(models)]
    refuse_report_overlaps(collected, [(json_target, "the JSON report")])
    checks = []
    for path in collected:
        try:
            result = check_model(path, check_model=not no_check, fold_input_initializers=fold_input_initializers,
                                 skip=skip_rules, inline_functions=inline_functions, max_foldable=max_foldable,
                                 max_standalone=max_standalone, max_kept=max_kept)
        except BnfoldError as error:
            result = ModelCheck(source=str(path), error=str(error), error_code=error.exit_code)
        checks.append(result)
        if json_target != "-" and not (quiet and result.exit_code == 0):
            click.echo(("bnfold: error: " if result.error is not None else "") + result.render(),
                       err=result.error is not None)
    exit_code = worst_exit_code(result.exit_code for result in checks)
    if json_target is not None:
        write_json({"exit_code": exit_code, "models": [result.to_dict() for result in checks]}, json_target)
    click.get_current_context().exit(exit_code)
