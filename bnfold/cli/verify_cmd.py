"""`bnfold verify A B`: run both models on the same inputs in ONNX Runtime CPU and compare every output."""

from __future__ import annotations

import json

import click

from ..errors import VerificationFailed
from ..runtime import OPT_LEVELS
from ..tolerances import DEFAULT_TOLERANCES
from .common import (ToleranceCommand, atol_option, input_shape_option, inputs_option, parse_tolerances,
                     rtol_option, seed_option)

def _defaults_help() -> str:
    rows = "\n".join(f"  {dtype:<9} {atol:<7g} {rtol:g}" for dtype, (atol, rtol) in DEFAULT_TOLERANCES.items())
    return (
        "\b\nDefault tolerances by output dtype (exact = integer and bool outputs; other float types as bfloat16):\n"
        f"  {'dtype':<9} {'atol':<7} rtol\n{rows}\n"
        "An element passes when |candidate - reference| <= atol + rtol * |reference|.\n"
        "A default atol follows the data: it is multiplied by max(1, largest |reference|) of the element's own\n"
        "channel (axis 1, for rank >= 2) or of the whole tensor (rank < 2), so one large channel cannot hide a\n"
        "wrong small one. An --atol you give is used as is. With --intermediates, every tensor both models share\n"
        "by name and meaning is compared by the same rule, and the first one that differs is named."
    )


@click.command(cls=ToleranceCommand, epilog=_defaults_help())
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@input_shape_option
@inputs_option
@seed_option
@click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Random input draws to compare (seed, seed+1, ...); inputs given by file stay fixed.")
@atol_option
@rtol_option
@click.option("--ort-opt-level", type=click.Choice(OPT_LEVELS), default="disable", show_default=True,
              help="ONNX Runtime graph optimizations. Enabled ones fuse Conv+BN in the reference too, "
                   "which can hide a wrong fold.")
@click.option("--intermediates", is_flag=True,
              help="Also compare every intermediate tensor both models share by name and meaning, and name the first "
                   "that differs (and the BatchNormalization behind it).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of the table.")
def verify(reference, candidate, input_shapes, input_files, seed, runs, atol, rtol, ort_opt_level, intermediates,
           as_json):
    """Compare REFERENCE and CANDIDATE numerically, output by output.

    Both run in ONNX Runtime on CPU on the same seeded random inputs (or your --inputs). Prints, per output,
    max abs/rel error, mean abs error, cosine similarity, elements outside tolerance and the smallest
    atol/rtol that would pass, then PASSED or FAILED. Exit 0 when every output is within tolerance, 1 when
    not, 2 for bad usage or a model that cannot be read.
    """
    from ..checking.end_to_end import verify as verify_models

    result = verify_models(
        reference,
        candidate,
        input_shapes=list(input_shapes),
        input_files=input_files,
        atol=parse_tolerances(atol, "--atol"),
        rtol=parse_tolerances(rtol, "--rtol"),
        runs=runs,
        seed=seed,
        ort_opt_level=ort_opt_level,
        intermediates=intermediates,
    )
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
    if not result.passed:
        failed = ", ".join(result.failed_outputs or result.failed_intermediates) or "; ".join(result.problems)
        raise VerificationFailed(f"models differ: {failed}", result)
