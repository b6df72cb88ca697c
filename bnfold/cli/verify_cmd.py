"""`bnfold verify A B`: run both models on the same inputs in ONNX Runtime CPU and compare every output."""

from __future__ import annotations

import click

from ..errors import VerificationFailed
from ..runtime import OPT_LEVELS
from ..tolerances import DEFAULT_TOLERANCES
from .common import (ToleranceCommand, atol_option, exit_codes_epilog, input_shape_option, inputs_option,
                     json_target_option, parse_tolerances, quiet_option, rtol_option, runs_option, seed_option,
                     write_json)

# How a tolerance is applied, worded once: `bnfold verify --help` and the README say exactly this (a test compares
# them, and checks the numbers against bnfold.checking.compare).
TOLERANCE_RULE = (
    "An element passes when |candidate - reference| <= atol + rtol * |reference|. A default atol follows the data: "
    "it is multiplied by max(1, the tensor's largest |reference|), since rounding grows with the values while a "
    "wrong fold shows as an error of its own size. Each channel (axis 1 of a tensor of rank >= 2 with at least 8 "
    "elements per channel) must also pass on its own: its mean |candidate - reference| must stay within 0.2 x the "
    "default atol x max(1, the channel's largest |reference|, the tensor's largest |reference| / 100), so one large "
    "channel cannot hide a wrong small one. A tensor computed in float16 takes the float16 defaults even when it is "
    "float32. A tensor outside its default tolerance is judged again: it may also differ by 4 x the original's own "
    "distance from its float64 evaluation, channel by channel (the noise floor). An --atol you give is used as is, "
    "for every element, with no channel rule and no noise floor."
)


def _defaults_help() -> str:
    rows = "\n".join(f"  {dtype:<9} {atol:<7g} {rtol:g}" for dtype, (atol, rtol) in DEFAULT_TOLERANCES.items())
    table = ("\b\nDefault tolerances by output dtype (exact = integer and bool outputs; other float types as "
             f"bfloat16):\n  {'dtype':<9} {'atol':<7} rtol\n{rows}")
    intermediates = ("With --intermediates, every tensor both models share by name and meaning is compared by the "
                     "same rule, and the first one that differs is named.")
    return exit_codes_epilog(f"{table}\n\n{TOLERANCE_RULE}\n\n{intermediates}")


@click.command(cls=ToleranceCommand, epilog=_defaults_help())
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@input_shape_option
@inputs_option
@seed_option
@runs_option
@atol_option
@rtol_option
@click.option("--ort-opt-level", type=click.Choice(OPT_LEVELS), default="disable", show_default=True,
              help="ONNX Runtime graph optimizations. Enabled ones fuse Conv+BN in the reference too, "
                   "which can hide a wrong fold.")
@click.option("--intermediates", is_flag=True,
              help="Also compare every intermediate tensor both models share by name and meaning, and name the first "
                   "that differs (and the BatchNormalization behind it).")
@json_target_option
@quiet_option
def verify(reference, candidate, input_shapes, input_files, seed, runs, atol, rtol, ort_opt_level, intermediates,
           json_target, quiet):
    """Compare REFERENCE and CANDIDATE numerically, output by output.

    Both run in ONNX Runtime on CPU on the same seeded random inputs (or your --inputs). Prints, per output,
    max abs/rel error, mean abs error, cosine similarity, elements outside tolerance and the smallest
    atol/rtol that would pass, then PASSED or FAILED. Exit 0 when every output is within tolerance, 1 when
    not, 2 for bad usage or a model that cannot be read.
    """
    from ..checking.end_to_end import verify as verify_models
    from ..options import VerifyOptions

    options = VerifyOptions(input_shapes=list(input_shapes), input_files=input_files, seed=seed, runs=runs,
                            atol=parse_tolerances(atol, "--atol"), rtol=parse_tolerances(rtol, "--rtol"),
                            intermediates=intermediates, ort_opt_level=ort_opt_level)
    result = verify_models(reference, candidate, **options.keywords())
    if json_target is not None:
        write_json(result.to_dict(), json_target)
    if json_target != "-" and not (quiet and result.passed):
        click.echo(result.summary())
    if not result.passed:
        failed = ", ".join(result.failed_outputs or result.failed_intermediates) or "; ".join(result.problems)
        raise VerificationFailed(f"models differ: {failed}", result)
